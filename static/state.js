/*
 * The chat page's shared state (an ES module imported by the page's other
 * modules): the page's elements, its settings from /get_config, the
 * accounts state, the maps kept per conversation, and `state`, the one
 * object holding what the modules reassign (current conversation, socket,
 * sidebar paging and search, pending watch, upload, rate limit, timers).
 */

export const STORAGE_KEY = 'llmChat.currentConversation';
export const PAGE_SIZE = 40;            // conversations per sidebar page
export const WATCH_ACK_TIMEOUT_MS = 8000;
export const NOTICE_MS = 6000;
export const STATUS_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  offline: 'Offline'
};
export const TRANSPORT_TEXT = {
  websocket: 'Connected over WebSocket',
  polling: 'Connected over HTTP long-polling (WebSocket is unavailable)'
};

export function byId(id) { return document.getElementById(id); }

export const els = {
  body: document.body,
  input: byId('message-input'),
  form: byId('composer'),
  send: byId('send-button'),
  modelPicker: byId('model-picker'),
  stop: byId('stop-button'),
  newChat: byId('new-chat-button'),
  shortcutsButton: byId('shortcuts-button'),
  shortcutsDialog: byId('shortcuts-dialog'),
  transcript: byId('transcript'),
  empty: byId('transcript-empty'),
  list: byId('conversation-list'),
  search: byId('search-input'),
  searchStatus: byId('search-status'),
  usage: byId('token-usage'),
  meter: byId('token-meter'),
  meterWrap: byId('token-meter-wrap'),
  tokenNote: byId('token-note'),
  error: byId('error-line'),
  notice: byId('notice'),
  status: byId('connection-status'),
  title: byId('conversation-title'),
  sidebar: byId('sidebar'),
  sidebarToggle: byId('sidebar-toggle'),
  chat: byId('chat'),
  menu: byId('conversation-menu'),
  menuButton: byId('conversation-menu-button'),
  share: byId('share-button'),
  save: byId('save-button'),
  exportMd: byId('export-md-button'),
  exportJson: byId('export-json-button'),
  fewShot: byId('few-shot-button'),
  reset: byId('reset-button'),
  del: byId('delete-button'),
  attach: byId('attach-button'),
  fileInput: byId('file-input'),
  fileLimits: byId('file-limits'),
  hint: byId('composer-hint'),
  uploadStatus: byId('upload-status'),
  uploadLabel: byId('upload-label'),
  uploadProgress: byId('upload-progress'),
  dropText: byId('drop-overlay-text'),
  fewShotDialog: byId('few-shot-dialog'),
  fewShotForm: byId('few-shot-form'),
  fewShotUser: byId('few-shot-user'),
  fewShotAssistant: byId('few-shot-assistant'),
  fewShotError: byId('few-shot-error'),
  fewShotCancel: byId('few-shot-cancel'),
  fewShotSubmit: byId('few-shot-submit'),
  confirmDialog: byId('confirm-dialog'),
  confirmForm: byId('confirm-form'),
  confirmTitle: byId('confirm-title'),
  confirmText: byId('confirm-text'),
  confirmOk: byId('confirm-ok'),
  confirmCancel: byId('confirm-cancel'),
  account: byId('account'),
  signIn: byId('sign-in-button'),
  accountMenu: byId('account-menu'),
  accountMenuButton: byId('account-menu-button'),
  accountEmail: byId('account-email'),
  accountWho: byId('account-who'),
  accountUsage: byId('account-usage'),
  accountUsageText: byId('account-usage-text'),
  changePassword: byId('change-password-button'),
  adminLink: byId('admin-link'),
  signOut: byId('sign-out-button'),
  signOutEverywhere: byId('sign-out-everywhere-button'),
  authDialog: byId('auth-dialog'),
  authForm: byId('auth-form'),
  authTitle: byId('auth-title'),
  authHelp: byId('auth-help'),
  authNameField: byId('auth-name-field'),
  authName: byId('auth-name'),
  authLocal: byId('auth-local-fields'),
  authEmail: byId('auth-email'),
  authPassword: byId('auth-password'),
  authPasswordHint: byId('auth-password-hint'),
  authError: byId('auth-error'),
  authCancel: byId('auth-cancel'),
  authSubmit: byId('auth-submit'),
  authSwitchLine: byId('auth-switch-line'),
  authSwitchText: byId('auth-switch-text'),
  authSwitch: byId('auth-switch'),
  authProviders: byId('auth-providers'),
  authOr: byId('auth-or'),
  passwordDialog: byId('password-dialog'),
  passwordForm: byId('password-form'),
  passwordUsername: byId('password-username'),
  passwordCurrent: byId('password-current'),
  passwordNew: byId('password-new'),
  passwordError: byId('password-error'),
  passwordCancel: byId('password-cancel'),
  passwordSubmit: byId('password-submit'),
  tokensButton: byId('tokens-button'),
  tokensDialog: byId('tokens-dialog'),
  tokensForm: byId('tokens-form'),
  tokensList: byId('tokens-list'),
  tokensEmpty: byId('tokens-empty'),
  tokensError: byId('tokens-error'),
  tokensClose: byId('tokens-close'),
  tokenCreated: byId('token-created'),
  tokenValue: byId('token-value'),
  tokenCopy: byId('token-copy'),
  tokenName: byId('token-name'),
  tokenCreate: byId('token-create'),
  sharesDialog: byId('shares-dialog'),
  sharesForm: byId('shares-form'),
  sharesList: byId('shares-list'),
  sharesEmpty: byId('shares-empty'),
  sharesError: byId('shares-error'),
  sharesClose: byId('shares-close'),
  shareCreated: byId('share-created'),
  shareUrl: byId('share-url'),
  shareCopy: byId('share-copy'),
  shareCreate: byId('share-create')
};

export const config = {
  max_tokens: Number(els.body.dataset.maxTokens) || 0,
  reply_tokens: 0,
  demo_mode: els.body.dataset.demoMode === 'true',
  max_message_chars: 0,
  max_file_size_mb: 0,
  allowed_extensions: [],
  default_model: null       // see models.js
};

export const conversations = new Map(); // conversation_id -> summary from the server
// conversation_id -> the model id it uses (from the server, or picked; see models.js)
export const conversationModels = new Map();
// conversation_id -> stream (see newStream)
export const streams = new Map();
export const usageById = new Map();     // conversation_id -> last token_usage
export const summarisedIds = new Set(); // conversations whose older turns were summarised
export const analyses = new Map();      // conversation_id -> [{after, el}] (this tab only)
export const rawText = new WeakMap();   // message element -> its text
// Accounts (GET /get_config `auth`; see accounts.js).
export const auth = {
  mode: 'none',        // 'none': no accounts and no account UI at all
  signupOpen: false,
  anonymous: true,     // false: nothing works before signing in
  providers: [],       // single sign-on providers: [{id, name}]
  me: null,            // the /auth/me body when signed in
  checked: false,      // /auth/me has answered
  required: false,     // the page waits behind the sign-in dialog
  signup: false,       // the dialog is in "Create an account" mode
  rechecking: false
};

export const regenerateButton = document.createElement('button');
regenerateButton.type = 'button';
regenerateButton.id = 'regenerate-button';
regenerateButton.className = 'message-action regenerate';

// What the modules reassign, in one object (an imported binding cannot be
// assigned from another module).
export const state = {
  // The conversation shown, and the live connection (live.js).
  currentId: null,
  socket: null,
  connectEpoch: 0,            // counts socket connections
  disconnectedOnce: false,
  pendingWatch: null,         // {id, buffer, timer}
  // Starting (startup.js), and which conversation load is the latest (conversations.js).
  initialized: false,
  initializing: false,
  loadSeq: 0,
  // The server keeps the "current conversation" in the session, and every
  // request writes the session back: a request running while another one
  // changes the current conversation can undo that change. So the page's
  // requests wait while a "make X current, then act on it" sequence runs,
  // and such a sequence waits for the requests already on their way (api.js).
  sessionLock: Promise.resolve(),
  noticeTimer: null,
  // The sidebar's pages and search (sidebar.js).
  listLoaded: 0,              // rows of /list_conversations this page holds
  listHasMore: false,
  listLoading: false,
  loadMoreVisible: false,
  search: null,               // {query, results|null, error}
  searchSeq: 0,
  searchTimer: null,
  // The composer (composer.js, upload.js, dialogs.js, app.js).
  upload: null,               // {name, xhr}
  rateLimitedUntil: 0,
  rateLimitTimer: null,
  confirmResolve: null,       // the open confirmation dialog's answer
  dragDepth: 0                // dragenter minus dragleave over the chat
};
