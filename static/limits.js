/*
 * The page's limits from /get_config, pure (no DOM, unit-tested in
 * tests/node/page-modules.test.mjs): the files it accepts, and the prompt's
 * share of the context window.
 */
import { formatBytes } from './format.js';

/** ".md, .txt": the extensions a file may have. */
export function allowedList(config) {
  return config.allowed_extensions.map(function (e) { return '.' + e; }).join(', ');
}

/** The reason the page will not upload `file`, or null. */
export function fileProblem(file, config) {
  var name = file.name || '';
  var dot = name.lastIndexOf('.');
  var ext = dot > 0 ? name.slice(dot + 1).toLowerCase() : '';
  var allowed = config.allowed_extensions.map(function (e) { return String(e).toLowerCase(); });
  if (allowed.length && allowed.indexOf(ext) === -1) {
    return '“' + name + '” is not a supported file type. Allowed: ' + allowedList(config) + '.';
  }
  var max = config.max_file_size_mb * 1024 * 1024;
  if (max && file.size > max) {
    return '“' + name + '” is too large (' + formatBytes(file.size) + '). The limit is ' + config.max_file_size_mb + ' MB.';
  }
  return null;
}

/** The tokens a prompt may use: the context window less what the reply needs. */
export function promptBudget(config) {
  var max = config.max_tokens;
  return config.reply_tokens > 0 && config.reply_tokens < max ? max - config.reply_tokens : max;
}
