/*
 * Accounts: the account menu, the sign-in / sign-up dialog (local accounts
 * and single sign-on), signing out, and changing the password.
 */
import { auth, els, state } from './state.js';
import { refreshUsage, sendJson, showError, showNotice } from './api.js';
import { closeConfirm } from './dialogs.js';
import { updateControls } from './composer.js';
import { bindTokensUi } from './tokens.js';
import { bindSharesUi } from './shares.js';

// Local accounts (AUTH_MODE=local). GET /get_config says {mode, signup_open,
// anonymous}; with mode "none" nothing here shows. Signed out where an
// account is needed, the page waits behind the sign-in dialog (no socket,
// no conversations). Signing in, up or out reloads the page, so the socket
// and every request start again with the new session cookie.

export function accountsOn() {
  return auth.mode !== 'none';
}

/** Email and password accounts (`local` in AUTH_MODE). */
function localOn() {
  return auth.mode.split(',').indexOf('local') >= 0;
}

/** Reads `auth` from /get_config, then asks /auth/me. Resolves true when the chat may start. */
export function checkAccount(cfg) {
  if (cfg && typeof cfg === 'object') {
    auth.mode = typeof cfg.mode === 'string' && cfg.mode ? cfg.mode : 'none';
    auth.signupOpen = cfg.signup_open === true;
    auth.anonymous = cfg.anonymous !== false;
    auth.providers = Array.isArray(cfg.providers) ? cfg.providers.filter(function (p) {
      return p && typeof p.id === 'string' && /^[a-z0-9_-]{1,32}$/.test(p.id) && typeof p.name === 'string';
    }) : [];
    showProviders();
  }
  if (!accountsOn()) {
    showAccount();
    return Promise.resolve(true);
  }
  if (auth.checked) return Promise.resolve(!auth.required && (!!auth.me || auth.anonymous));
  return sendJson('GET', '/auth/me').then(function (me) {
    auth.me = me && typeof me === 'object' ? me : null;
    auth.checked = true;
    showAccount();
    return true;
  }, function (err) {
    if (err.status !== 401) throw err;
    auth.me = null;
    auth.checked = true;
    showAccount();
    if (auth.anonymous) return true;
    requireSignIn();
    return false;
  });
}

/**
 * The sign-in dialog's single sign-on buttons, one per provider: links to
 * GET /auth/oidc/{id}/login, which sends the browser to the provider and
 * back here signed in.
 */
function showProviders() {
  els.authProviders.textContent = '';
  auth.providers.forEach(function (provider) {
    var link = document.createElement('a');
    link.className = 'button provider-button';
    link.href = '/auth/oidc/' + encodeURIComponent(provider.id) + '/login';
    link.dataset.provider = provider.id;
    link.textContent = 'Sign in with ' + provider.name;
    els.authProviders.appendChild(link);
  });
  var sso = auth.providers.length > 0;
  els.authProviders.hidden = !sso;
  els.authOr.hidden = !(sso && localOn());
}

/** The header: a Sign in button, or the account menu with the email. */
function showAccount() {
  els.account.hidden = !accountsOn();
  if (!accountsOn()) return;
  var me = auth.me;
  var email = me && me.email ? String(me.email) : '';
  els.signIn.hidden = !!me;
  els.accountMenu.hidden = !me;
  if (!me) { els.accountMenu.open = false; return; }
  var name = me.name ? String(me.name) : '';
  els.accountEmail.textContent = email;
  els.accountMenuButton.setAttribute('aria-label', 'Account: ' + email);
  els.accountWho.textContent = (name ? name + ' <' + email + '>' : email) + (me.is_admin ? ' (administrator)' : '');
  els.passwordUsername.value = email;
  // A single sign-on account has no password here.
  els.changePassword.hidden = !localOn() || me.auth !== 'local';
  els.adminLink.hidden = !me.is_admin;
  refreshUsage();
}

/** Nothing works without an account: stop the socket and ask to sign in. */
function requireSignIn(message) {
  auth.required = true;
  if (state.socket) state.socket.close();
  els.status.dataset.status = 'signed-out';
  els.status.textContent = 'Signed out';
  updateControls();
  if (els.confirmDialog.open) closeConfirm(false);
  [els.fewShotDialog, els.passwordDialog, els.tokensDialog, els.sharesDialog].forEach(function (d) { if (d.open) d.close(); });
  openAuthDialog(false);
  if (message) setAuthError(message);
}

/** A conversation route answered 401 "unauthenticated". */
export function onUnauthenticated() {
  if (!accountsOn() || auth.required) return;
  auth.me = null;
  showAccount();
  requireSignIn('Your session has ended. Sign in to continue.');
}

/** The socket handshake was refused, or the server disconnected it: still signed in? */
export function recheckSession() {
  if (auth.required || auth.rechecking) return;
  auth.rechecking = true;
  sendJson('GET', '/auth/me').then(function (me) {
    auth.me = me && typeof me === 'object' ? me : null;
    showAccount();
  }, function (err) {
    if (err.status !== 401) return;
    var was = auth.me;
    auth.me = null;
    showAccount();
    if (!auth.anonymous) {
      requireSignIn(was ? 'Your session has ended. Sign in to continue.' : null);
    } else if (was) {
      // Signed out elsewhere where the page also works signed out: start
      // again as this browser's anonymous user (the account's conversations go).
      window.location.reload();
    }
  }).then(function () {
    auth.rechecking = false;
  });
}

/** A dialog's error line (an alert region): text only, with a warning sign when set. */
export function setDialogError(el, message) {
  el.textContent = message || '';
  el.classList.toggle('is-visible', !!message);
}
function setAuthError(message) { setDialogError(els.authError, message); }

/** Switches the dialog between signing in and creating an account. */
function setAuthMode(signup) {
  auth.signup = !!signup && auth.signupOpen;
  var up = auth.signup;
  els.authTitle.textContent = up ? 'Create an account' : 'Sign in';
  els.authSubmit.textContent = up ? 'Create account' : 'Sign in';
  els.authHelp.textContent = up
    ? (auth.anonymous ? 'The conversations of this browser move to your new account.' : 'Create an account to start chatting.')
    : (auth.required ? 'Sign in to continue.' : 'Sign in to keep your conversations with your account.');
  els.authNameField.hidden = !up;
  els.authPasswordHint.hidden = !up;
  els.authPassword.setAttribute('autocomplete', up ? 'new-password' : 'current-password');
  els.authEmail.setAttribute('autocomplete', up ? 'email' : 'username');
  els.authSwitchLine.hidden = !auth.signupOpen || !localOn();
  els.authLocal.hidden = !localOn();
  els.authSubmit.hidden = !localOn();
  if (auth.mode === 'proxy') {
    els.authHelp.textContent = 'Sign in through your organisation\u2019s sign-in page, then reload this page.';
  }
  els.authSwitchText.textContent = up ? 'Already have an account?' : 'No account yet?';
  els.authSwitch.textContent = up ? 'Sign in instead' : 'Create an account';
  setAuthError('');
  [els.authEmail, els.authPassword].forEach(function (f) { f.removeAttribute('aria-invalid'); });
}

/** Opens the sign-in dialog; `optional`: it may be closed (the page works signed out). */
function openAuthDialog(optional) {
  var dismissable = !!optional && !auth.required;
  els.authCancel.hidden = !dismissable;
  els.authDialog.dataset.required = dismissable ? 'false' : 'true';
  // Where the browser knows closedby, Escape cannot close a required dialog at
  // all; elsewhere the close handler below shows it again.
  els.authDialog.setAttribute('closedby', dismissable ? 'closerequest' : 'none');
  setAuthMode(false);
  if (!els.authDialog.open) els.authDialog.showModal();
  focusAuthDialog();
}

/** The email field, or the first provider's button without local accounts. */
function focusAuthDialog() {
  var first = els.authProviders.querySelector('a');
  if (localOn()) els.authEmail.focus();
  else if (first) first.focus();
}

function closeAuthDialog() {
  if (auth.required || !els.authDialog.open) return;
  els.authDialog.close();
}

function submitAuth() {
  if (els.authSubmit.disabled) return;
  var up = auth.signup;
  var email = els.authEmail.value.trim();
  var password = els.authPassword.value;
  if (!email || !password) {
    setAuthError(up ? 'Enter an email address and a password.' : 'Enter your email and password.');
    var empty = !email ? els.authEmail : els.authPassword;
    empty.setAttribute('aria-invalid', 'true');
    empty.focus();
    return;
  }
  var body = { email: email, password: password };
  if (up && els.authName.value.trim()) body.name = els.authName.value.trim();
  els.authSubmit.disabled = true;
  els.authForm.setAttribute('aria-busy', 'true');
  setAuthError('');
  sendJson('POST', up ? '/auth/signup' : '/auth/login', body).then(function () {
    // Signed in: start again with the new session cookie.
    els.authHelp.textContent = 'Signed in. Loading your conversations…';
    window.location.reload();
  }, function (err) {
    els.authSubmit.disabled = false;
    els.authForm.removeAttribute('aria-busy');
    setAuthError(err.message);
    if (err.code === 'invalid_credentials' || (err.code === 'invalid' && /password/i.test(err.message))) {
      els.authPassword.setAttribute('aria-invalid', 'true');
      els.authPassword.focus();
      els.authPassword.select();
    } else if (err.code === 'conflict' || (err.code === 'invalid' && /email/i.test(err.message))) {
      els.authEmail.setAttribute('aria-invalid', 'true');
      els.authEmail.focus();
    } else if (err.code === 'signup_closed') {
      auth.signupOpen = false;
      els.authSwitchLine.hidden = true;
    }
  });
}

/** Signs out here, or (`everywhere`) on every device: the server ends every
 * session of the account and disconnects its other tabs, which then ask to sign in. */
function signOut(everywhere) {
  var buttons = [els.signOut, els.signOutEverywhere];
  if (buttons.some(function (b) { return b.disabled; })) return;
  buttons.forEach(function (b) { b.disabled = true; });
  var request = everywhere
    ? sendJson('POST', '/auth/logout', { everywhere: true })
    : sendJson('POST', '/auth/logout');
  request.then(function (done) {
    // Behind a sign-in proxy (or a provider), its own sign-out comes next.
    var next = done && typeof done.logout_url === 'string' ? done.logout_url : '';
    if (/^(https?:\/\/|\/(?!\/))/.test(next)) window.location.assign(next);
    else window.location.reload();
  }, function (err) {
    buttons.forEach(function (b) { b.disabled = false; });
    showError('Could not sign out: ' + err.message);
  });
}

function openPasswordDialog() {
  els.passwordCurrent.value = '';
  els.passwordNew.value = '';
  setDialogError(els.passwordError, '');
  [els.passwordCurrent, els.passwordNew].forEach(function (f) { f.removeAttribute('aria-invalid'); });
  els.passwordDialog.showModal();
  els.passwordCurrent.focus();
}

function submitPassword() {
  if (els.passwordSubmit.disabled) return;
  var current = els.passwordCurrent.value;
  var next = els.passwordNew.value;
  if (!current || !next) {
    setDialogError(els.passwordError, 'Enter your current password and a new one.');
    var empty = !current ? els.passwordCurrent : els.passwordNew;
    empty.setAttribute('aria-invalid', 'true');
    empty.focus();
    return;
  }
  els.passwordSubmit.disabled = true;
  setDialogError(els.passwordError, '');
  sendJson('POST', '/auth/password', { current: current, new: next }).then(function (data) {
    els.passwordDialog.close();
    els.passwordCurrent.value = '';
    els.passwordNew.value = '';
    showNotice((data && data.message) || 'Password changed.');
  }, function (err) {
    setDialogError(els.passwordError, err.message);
    var field = err.code === 'invalid_credentials' ? els.passwordCurrent : els.passwordNew;
    field.setAttribute('aria-invalid', 'true');
    field.focus();
    field.select();
  }).then(function () {
    els.passwordSubmit.disabled = false;
  });
}

export function bindAccountUi() {
  bindTokensUi();
  bindSharesUi();
  els.signIn.addEventListener('click', function () { openAuthDialog(true); });
  els.authForm.addEventListener('submit', function (e) { e.preventDefault(); submitAuth(); });
  els.authCancel.addEventListener('click', closeAuthDialog);
  els.authDialog.addEventListener('cancel', function (e) {
    // Escape: only where the page works signed out.
    e.preventDefault();
    closeAuthDialog();
  });
  els.authDialog.addEventListener('close', function () {
    // Chromium lets a repeated Escape close a modal dialog even when its
    // cancel event is refused: the page cannot be used signed out, so back it comes.
    if (auth.required) { els.authDialog.showModal(); focusAuthDialog(); return; }
    if (!els.signIn.hidden) els.signIn.focus();
  });
  els.authSwitch.addEventListener('click', function () {
    setAuthMode(!auth.signup);
    (auth.signup ? els.authName : els.authEmail).focus();
  });
  [els.authName, els.authEmail, els.authPassword].forEach(function (field) {
    field.addEventListener('input', function () {
      field.removeAttribute('aria-invalid');
      if (els.authError.textContent) setAuthError('');
    });
  });

  els.changePassword.addEventListener('click', function () {
    els.accountMenu.open = false;
    openPasswordDialog();
  });
  els.signOut.addEventListener('click', function () {
    els.accountMenu.open = false;
    signOut(false);
  });
  els.signOutEverywhere.addEventListener('click', function () {
    els.accountMenu.open = false;
    signOut(true);
  });
  els.passwordForm.addEventListener('submit', function (e) { e.preventDefault(); submitPassword(); });
  els.passwordCancel.addEventListener('click', function () { els.passwordDialog.close(); });
  els.passwordDialog.addEventListener('close', function () { els.input.focus(); });
  [els.passwordCurrent, els.passwordNew].forEach(function (field) {
    field.addEventListener('input', function () {
      field.removeAttribute('aria-invalid');
      setDialogError(els.passwordError, '');
    });
  });
}
