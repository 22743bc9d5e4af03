/*
 * Files: the composer's limits line, checks before sending, the upload with
 * its progress, and the analysis shown in the transcript.
 */
import * as md from './markdown.js';
import { analyses, config, els, rawText, state } from './state.js';
import { allowedList, fileProblem } from './limits.js';
import { apiError, clearError, showError, showNotice } from './api.js';
import { chatMessages, updateEmptyState } from './transcript.js';
import { startRateLimitNotice, updateControls } from './composer.js';


export function describeLimits() {
  var text = 'Allowed files: ' + (allowedList(config) || 'text files') +
    (config.max_file_size_mb ? ', up to ' + config.max_file_size_mb + ' MB' : '') + '.';
  els.fileLimits.textContent = text;
  els.attach.title = 'Attach a file to analyse (or drop it here). ' + text;
  els.fileInput.accept = config.allowed_extensions.map(function (e) { return '.' + e; }).join(',');
  els.dropText.textContent = 'Drop a file to analyse it (' + (allowedList(config) || 'text files') + ')';
}


export function setUploadStatus(label, done, total) {
  els.uploadStatus.hidden = false;
  els.hint.hidden = true;
  els.uploadLabel.textContent = label;
  if (typeof done === 'number' && total > 0) {
    els.uploadProgress.max = total;
    els.uploadProgress.value = done;
  } else {
    els.uploadProgress.removeAttribute('value'); // indeterminate
  }
}

function endUploadStatus() {
  els.uploadStatus.hidden = true;
  els.hint.hidden = false;
}

export function uploadFile(file) {
  if (!file) return;
  if (state.upload) { showError('A file is being analysed already; please wait for it.'); return; }
  var problem = fileProblem(file, config);
  if (problem) { showError(problem); return; }
  clearError();
  var id = state.currentId;
  var xhr = new XMLHttpRequest();
  state.upload = { name: file.name, xhr: xhr, conversationId: id, analysing: false };
  updateControls();
  setUploadStatus('Uploading ' + file.name + '…', 0, 1);
  xhr.open('POST', '/upload_file');
  xhr.setRequestHeader('Accept', 'application/json');
  xhr.upload.onprogress = function (e) {
    if (e.lengthComputable && state.upload && !state.upload.analysing) {
      setUploadStatus('Uploading ' + file.name + '… ' + Math.round((e.loaded / e.total) * 100) + '%', e.loaded, e.total);
    }
  };
  xhr.upload.onload = function () {
    if (state.upload && !state.upload.analysing) setUploadStatus('Analysing ' + file.name + '…');
  };
  xhr.onload = function () {
    var data = null;
    try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
    finishUpload();
    if (xhr.status >= 200 && xhr.status < 300 && data) {
      showAnalysis(id, data.file_name || file.name, String(data.analysis || ''), data.chunks);
      showNotice('“' + (data.file_name || file.name) + '” was analysed.');
    } else {
      var err = apiError({ status: xhr.status }, data);
      if (err.code === 'rate_limited' && err.retryAfter) startRateLimitNotice(err.message);
      else showError(err.message);
    }
  };
  xhr.onerror = function () {
    finishUpload();
    showError('Could not upload “' + file.name + '”: the server could not be reached.');
  };
  xhr.onabort = function () { finishUpload(); };
  var body = new FormData();
  body.append('file', file, file.name);
  xhr.send(body);
}

function finishUpload() {
  state.upload = null;
  endUploadStatus();
  els.fileInput.value = '';
  updateControls();
}

function showAnalysis(id, name, analysis, chunks) {
  var block = document.createElement('section');
  block.className = 'message message-analysis';
  block.dataset.role = 'analysis';
  block.setAttribute('aria-label', 'Analysis of ' + name);
  var head = document.createElement('div');
  head.className = 'analysis-head';
  var title = document.createElement('strong');
  title.textContent = 'File analysis: ' + name;
  var meta = document.createElement('span');
  meta.className = 'analysis-meta';
  var n = Number(chunks) || 0;
  meta.textContent = n + (n === 1 ? ' part' : ' parts') + ' · shown in this tab only';
  head.append(title, meta);
  var content = document.createElement('div');
  content.className = 'message-content';
  // "-- Analysis for Chunk i --" lines become small headings.
  var text = analysis.replace(/^-- Analysis for Chunk (\d+) --$/gm, '#### Part $1').trim();
  md.renderInto(content, text);
  block.append(head, content);
  rawText.set(block, analysis);
  var entry = { after: chatMessages().length, el: block };
  if (!analyses.has(id)) analyses.set(id, []);
  analyses.get(id).push(entry);
  if (id === state.currentId) {
    els.transcript.appendChild(block);
    updateEmptyState();
    // Show the analysis from its start (it may be long).
    els.transcript.scrollTop = Math.max(0, block.offsetTop - els.transcript.offsetTop - 8);
  }
}
export function hasFiles(e) {
  var types = e.dataTransfer && e.dataTransfer.types;
  return !!types && Array.prototype.indexOf.call(types, 'Files') !== -1;
}
