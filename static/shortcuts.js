/*
 * Keyboard shortcuts, listed in the help dialog (#shortcuts-dialog); Ctrl or
 * Cmd alike.
 */
import { auth, byId, els, state, streams } from './state.js';
import { newChat } from './conversations.js';
import { regenerate, stopGeneration } from './composer.js';

// Listed in the help dialog (#shortcuts-dialog); Ctrl or Cmd alike.

export function openShortcuts() {
  if (els.shortcutsDialog.open) return;
  els.shortcutsDialog.showModal();
  byId('shortcuts-close').focus();
}

function anyDialogOpen() {
  return !!document.querySelector('dialog[open]');
}

export function onShortcut(e) {
  var mod = (e.ctrlKey || e.metaKey) && !e.altKey;
  if (e.defaultPrevented || e.isComposing) return;
  if (mod && e.key === '/') {
    e.preventDefault();
    openShortcuts();
    return;
  }
  if (anyDialogOpen() || auth.required) return;
  if (mod && !e.shiftKey && (e.key === 'k' || e.key === 'K')) {
    e.preventDefault();
    els.sidebar.classList.add('is-open');
    els.sidebarToggle.setAttribute('aria-expanded', 'true');
    els.search.focus();
    els.search.select();
  } else if (mod && e.shiftKey && e.code === 'KeyO') {
    e.preventDefault();
    newChat();
  } else if (mod && e.shiftKey && e.key === 'Enter') {
    e.preventDefault();
    regenerate();
  } else if (e.key === 'Escape' && !mod && state.currentId && streams.has(state.currentId)
    && !e.target.closest('details[open], .search')) {
    e.preventDefault();
    stopGeneration();
  }
}
