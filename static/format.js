/*
 * The page's text rules, pure (no DOM, unit-tested in
 * tests/node/page-modules.test.mjs): numbers, sizes, lengths, file names and
 * the quota sentence.
 */

/** 12345 as "12 345" (no-break spaces, so a number never wraps). */
export function groupDigits(n) {
  return String(Math.max(0, Math.floor(Number(n) || 0))).replace(/\B(?=(\d{3})+(?!\d))/g, '\u00a0');
}

/** Length in code points, as the server counts a message. */
export function codePoints(text) {
  return Array.from(text).length;
}

/** A file size for people: "512 bytes", "1.5 KB", "120 KB", "2.0 MB". */
export function formatBytes(n) {
  if (n < 1024) return n + ' bytes';
  if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + ' KB';
  return (n / 1024 / 1024).toFixed(1) + ' MB';
}

/** A file-name part from a title: lower-case ASCII words joined by "-", at most 48 characters. */
export function slug(text) {
  var s = String(text || '').toLowerCase().normalize('NFKD').replace(/[\u0300-\u036f]/g, '')
    .replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 48).replace(/-+$/, '');
  return s || 'conversation';
}

/** A `quota_exceeded` error's sentence, with the reset time in the reader's own time zone. */
export function quotaMessage(data) {
  var message = (data && typeof data.message === 'string' && data.message) || 'You have used your tokens for today.';
  var at = data && typeof data.resets_at === 'string' ? new Date(data.resets_at) : null;
  if (!at || isNaN(at.getTime())) return message;
  var when = at.toLocaleString([], { weekday: 'short', hour: '2-digit', minute: '2-digit' });
  return message.replace(/\s*The quota resets at .*$/, '') + ' It resets on ' + when + ' (your time).';
}
