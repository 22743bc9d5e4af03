/*
 * The chat settings dialog ("Chat settings" beside the model picker): the
 * open conversation's system prompt, temperature and model, saved with
 * PATCH /conversation/{id}/settings (or, before a conversation exists,
 * by starting one with them); and the user's presets (GET/POST /presets,
 * DELETE /presets/{id}): start a new chat from one, save the settings as
 * one, delete one. Other tabs' changes arrive as conversation_updated
 * with `settings` (live.js calls onSettingsChanged).
 */
import { byId, conversationModels, els, state } from './state.js';
import { api, showNotice } from './api.js';
import { setDialogError } from './accounts.js';
import { startConversationWith } from './conversations.js';
import { showModel } from './models.js';

const ui = {
  button: byId('settings-button'),
  dialog: byId('settings-dialog'),
  form: byId('settings-form'),
  prompt: byId('settings-system-prompt'),
  temperature: byId('settings-temperature'),
  modelField: byId('settings-model-field'),
  model: byId('settings-model'),
  save: byId('settings-save'),
  close: byId('settings-close'),
  error: byId('settings-error'),
  presets: byId('presets-list'),
  presetsEmpty: byId('presets-empty'),
  presetName: byId('preset-name'),
  presetSave: byId('preset-save'),
  presetsError: byId('presets-error')
};

/** Fills the model choice with the picker's models (shown when there are several). */
function fillModels() {
  var picker = els.modelPicker;
  ui.model.textContent = '';
  Array.prototype.forEach.call(picker ? picker.options : [], function (option) {
    var copy = document.createElement('option');
    copy.value = option.value;
    copy.textContent = option.textContent;
    ui.model.appendChild(copy);
  });
  ui.modelField.hidden = !picker || picker.hidden || ui.model.options.length < 2;
}

/** Shows these settings in the dialog's fields. */
function showSettings(settings) {
  ui.prompt.value = typeof settings.system_prompt === 'string' ? settings.system_prompt : '';
  ui.temperature.value = typeof settings.temperature === 'number' ? String(settings.temperature) : '';
  var model = typeof settings.model === 'string' ? settings.model : (els.modelPicker && els.modelPicker.value);
  if (model && !ui.modelField.hidden) ui.model.value = model;
}

/** The dialog's settings, as the server takes them (null: the default). */
function chosenSettings() {
  var body = {
    system_prompt: ui.prompt.value.trim() ? ui.prompt.value : null,
    temperature: null
  };
  var raw = ui.temperature.value.trim();
  if (raw) {
    var t = Number(raw);
    // The range is the server's to check (its message is shown).
    if (!isFinite(t)) throw new Error('The temperature must be a number (empty: the model\'s own).');
    body.temperature = t;
  }
  if (!ui.modelField.hidden && ui.model.value) body.model = ui.model.value;
  return body;
}

function presetRow(preset) {
  var li = document.createElement('li');
  li.className = 'token-item preset-item';
  var text = document.createElement('span');
  text.className = 'token-item-text';
  var name = document.createElement('span');
  name.className = 'token-item-name';
  name.textContent = String(preset.name || '');
  var details = document.createElement('span');
  details.className = 'token-item-date';
  var parts = [];
  if (preset.model) parts.push(String(preset.model));
  if (typeof preset.temperature === 'number') parts.push('temperature ' + preset.temperature);
  if (preset.system_prompt) parts.push('“' + String(preset.system_prompt).slice(0, 60) + '”');
  details.textContent = parts.length ? parts.join(' · ') : 'The defaults';
  text.appendChild(name);
  text.appendChild(details);
  var start = document.createElement('button');
  start.type = 'button';
  start.className = 'button preset-start';
  start.textContent = 'New chat';
  start.setAttribute('aria-label', 'Start a new chat from ' + preset.name);
  start.addEventListener('click', function () { startFromPreset(preset, start); });
  var remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'button button-quiet token-revoke preset-delete';
  remove.textContent = 'Delete';
  remove.setAttribute('aria-label', 'Delete the preset ' + preset.name);
  remove.addEventListener('click', function () { deletePreset(preset, remove); });
  li.appendChild(text);
  li.appendChild(start);
  li.appendChild(remove);
  return li;
}

function loadPresets() {
  return api('GET', '/presets').then(function (data) {
    var presets = (data && Array.isArray(data.presets)) ? data.presets : [];
    ui.presets.textContent = '';
    presets.forEach(function (preset) { ui.presets.appendChild(presetRow(preset)); });
    ui.presetsEmpty.hidden = presets.length > 0;
  }, function (err) {
    setDialogError(ui.presetsError, 'Could not list your presets: ' + err.message);
  });
}

/** Reads the open conversation's settings from the server into the fields. */
function loadSettings() {
  var id = state.currentId;
  if (!id) { showSettings({}); return Promise.resolve(); }
  return api('GET', '/load_conversation/' + encodeURIComponent(id) + '?limit=1').then(function (data) {
    // Not over what the user has typed meanwhile.
    if (id !== state.currentId || !data || ui.dialog.dataset.edited) return;
    showSettings(data);
  }, function (err) {
    setDialogError(ui.error, 'Could not read this conversation\'s settings: ' + err.message);
  });
}

export function openSettingsDialog() {
  setDialogError(ui.error, '');
  setDialogError(ui.presetsError, '');
  fillModels();
  showSettings({});
  delete ui.dialog.dataset.edited;
  ui.presets.textContent = '';
  ui.presetsEmpty.hidden = true;
  ui.dialog.showModal();
  ui.prompt.focus();
  loadSettings();
  loadPresets();
}

function saveSettings() {
  var body;
  try { body = chosenSettings(); } catch (err) { setDialogError(ui.error, err.message); return; }
  setDialogError(ui.error, '');
  ui.save.disabled = true;
  var id = state.currentId;
  var done = id
    ? api('PATCH', '/conversation/' + encodeURIComponent(id) + '/settings', body).then(function (data) {
      if (data && typeof data.model === 'string') conversationModels.set(id, data.model);
      if (id === state.currentId) showModel(id);
    })
    // No conversation yet: start one with these settings.
    : startConversationWith(stripNulls(body));
  done.then(function () {
    ui.dialog.close();
    showNotice('Chat settings saved.');
  }, function (err) {
    setDialogError(ui.error, err.message);
  }).then(function () { ui.save.disabled = false; });
}

function stripNulls(body) {
  var out = {};
  Object.keys(body).forEach(function (key) { if (body[key] !== null) out[key] = body[key]; });
  return out;
}

function savePreset() {
  var name = ui.presetName.value.trim();
  if (!name) { setDialogError(ui.presetsError, 'Give the preset a name.'); ui.presetName.focus(); return; }
  var body;
  try { body = chosenSettings(); } catch (err) { setDialogError(ui.presetsError, err.message); return; }
  body = stripNulls(body);
  body.name = name;
  setDialogError(ui.presetsError, '');
  ui.presetSave.disabled = true;
  api('POST', '/presets', body).then(function () {
    ui.presetName.value = '';
    showNotice('Preset “' + name + '” saved.');
    return loadPresets();
  }, function (err) {
    setDialogError(ui.presetsError, err.message);
  }).then(function () { ui.presetSave.disabled = false; });
}

function startFromPreset(preset, button) {
  button.disabled = true;
  setDialogError(ui.presetsError, '');
  startConversationWith({ preset_id: preset.preset_id }).then(function () {
    ui.dialog.close();
    showNotice('New chat started from “' + preset.name + '”.');
  }, function (err) {
    button.disabled = false;
    setDialogError(ui.presetsError, err.message);
  });
}

function deletePreset(preset, button) {
  button.disabled = true;
  setDialogError(ui.presetsError, '');
  api('DELETE', '/presets/' + encodeURIComponent(preset.preset_id)).then(function () {
    return loadPresets();
  }, function (err) {
    button.disabled = false;
    setDialogError(ui.presetsError, err.message);
  });
}

/** conversation_updated with `settings` (a change in this or another tab). */
export function onSettingsChanged(conversationId, settings) {
  if (!settings || typeof settings !== 'object') return;
  if (typeof settings.model === 'string') conversationModels.set(conversationId, settings.model);
  if (conversationId !== state.currentId) return;
  showModel(conversationId);
  // Not over what the user is typing.
  if (ui.dialog.open && !ui.save.disabled && !ui.dialog.dataset.edited) showSettings(settings);
}

export function bindSettings() {
  if (!ui.button || !ui.dialog) return;
  ui.button.addEventListener('click', openSettingsDialog);
  ui.form.addEventListener('submit', function (e) { e.preventDefault(); saveSettings(); });
  ui.close.addEventListener('click', function () { ui.dialog.close(); });
  ui.presetSave.addEventListener('click', savePreset);
  ui.presetName.addEventListener('keydown', function (e) {
    if (e.key === 'Enter') { e.preventDefault(); savePreset(); }
  });
  [ui.prompt, ui.temperature, ui.model].forEach(function (field) {
    field.addEventListener('input', function () { ui.dialog.dataset.edited = 'true'; });
  });
  ui.dialog.addEventListener('close', function () { els.input.focus(); });
}
