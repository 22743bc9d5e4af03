/*
 * The model picker: shown when GET /get_config lists more than one model.
 * Each conversation's model (from load/start) is remembered in
 * `conversationModels`; a pick is sent with the next message
 * (`send_message {model}`), which switches the conversation to it on the
 * server.
 */
import { config, conversationModels, els, state } from './state.js';

export function applyModels(models, defaultModel) {
  var picker = els.modelPicker;
  if (!picker || !Array.isArray(models)) return;
  config.default_model = typeof defaultModel === 'string' ? defaultModel : null;
  while (picker.firstChild) picker.removeChild(picker.firstChild);
  models.forEach(function (model) {
    if (!model || typeof model.id !== 'string') return;
    var option = document.createElement('option');
    option.value = model.id;
    option.textContent = typeof model.name === 'string' && model.name ? model.name : model.id;
    picker.appendChild(option);
  });
  picker.hidden = picker.options.length < 2;
  showModel(state.currentId);
}

/** Shows the model of conversation `id` (its own, else the default) in the picker. */
export function showModel(id) {
  var picker = els.modelPicker;
  if (!picker || picker.hidden) return;
  var model = (id && conversationModels.get(id)) || config.default_model;
  if (model) picker.value = model;
}

/** The model to send with a message: the picker's, when it is shown. */
export function pickedModel() {
  var picker = els.modelPicker;
  return picker && !picker.hidden && picker.value ? picker.value : null;
}
