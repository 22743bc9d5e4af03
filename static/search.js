/*
 * Sidebar search: the words of a query, and a title split into the parts
 * that match them (ES module, no DOM). Unit-tested by
 * tests/node/page-modules.test.mjs.
 */

/** The words of a search query (letters and digits), at most 16. */
export function searchTerms(query) {
  return (String(query).match(/[\p{L}\p{N}]+/gu) || []).slice(0, 16);
}

/**
 * `text` as [{text, mark}] parts, where `mark` says the part is a
 * whole-word, case-insensitive match of one of `terms`.
 */
export function highlightParts(text, terms) {
  if (!terms || !terms.length) return text ? [{ text, mark: false }] : [];
  const escaped = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  const re = new RegExp(`(?<![\\p{L}\\p{N}])(?:${escaped.join('|')})(?![\\p{L}\\p{N}])`, 'giu');
  const parts = [];
  let at = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m[0].length === 0) { re.lastIndex++; continue; }
    if (m.index > at) parts.push({ text: text.slice(at, m.index), mark: false });
    parts.push({ text: m[0], mark: true });
    at = m.index + m[0].length;
  }
  if (at < text.length) parts.push({ text: text.slice(at), mark: false });
  return parts;
}
