// The administration page (/admin): every account with today's token usage and quota;
// disable or enable, make or unmake an administrator, set a person's own daily quota.
// Everything is built with textContent (no HTML from strings); the server checks every
// change (admins only, never oneself).
(function () {
  'use strict';

  var els = {
    summary: document.getElementById('admin-summary'),
    error: document.getElementById('admin-error'),
    rows: document.getElementById('admin-rows'),
  };
  var state = { me: null, users: [], defaultQuota: 0, date: '', busy: false };
  var numbers = new Intl.NumberFormat();

  /** fetch JSON; rejects with the server's message. */
  function api(method, path, body) {
    var options = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    return fetch(path, options).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) {
          var err = new Error(data && typeof data.message === 'string' ? data.message : 'The server answered ' + res.status + '.');
          err.status = res.status;
          throw err;
        }
        return data;
      });
    });
  }

  function setError(message) {
    els.error.textContent = message || '';
    els.error.classList.toggle('is-visible', !!message);
  }

  function element(tag, className, text) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function button(label, onClick, disabled, title) {
    var b = element('button', 'button', label);
    b.type = 'button';
    b.disabled = !!disabled;
    if (title) b.title = title;
    b.addEventListener('click', onClick);
    return b;
  }

  function load() {
    return Promise.all([api('GET', '/auth/me'), api('GET', '/admin/users?limit=1000')]).then(function (answers) {
      state.me = answers[0];
      var listing = answers[1] || {};
      state.users = Array.isArray(listing.users) ? listing.users : [];
      state.defaultQuota = Number(listing.default_quota_tokens_per_day) || 0;
      state.date = typeof listing.date === 'string' ? listing.date : '';
      render();
    }, function (err) {
      els.summary.textContent = err.status === 401 ? 'Sign in as an administrator first.'
        : err.status === 403 ? 'Only administrators may see this page.'
        : 'Could not load the accounts.';
      setError(err.message);
    });
  }

  function quotaText(user) {
    var quota = Number(user.quota_tokens_per_day) || 0;
    return quota === 0 ? 'none' : numbers.format(quota);
  }

  function render() {
    var users = state.users;
    var admins = users.filter(function (u) { return u.is_admin; }).length;
    els.summary.textContent = users.length + (users.length === 1 ? ' account' : ' accounts') + ', ' + admins +
      (admins === 1 ? ' administrator' : ' administrators') + '. Usage on ' + (state.date || 'today') + ' (UTC); default quota: ' +
      (state.defaultQuota ? numbers.format(state.defaultQuota) + ' tokens a day' : 'none') + '.';
    els.rows.replaceChildren();
    users.forEach(function (user) { els.rows.appendChild(row(user)); });
  }

  function row(user) {
    var self = state.me && state.me.user_id === user.user_id;
    var tr = element('tr');
    tr.dataset.userId = user.user_id;

    var who = element('td', 'admin-person');
    who.appendChild(element('span', 'admin-email', String(user.email || '')));
    if (user.name) who.appendChild(element('span', 'admin-name', String(user.name)));
    tr.appendChild(who);

    var since = String(user.created_at || '').slice(0, 10);
    tr.appendChild(element('td', 'admin-since', since));

    var used = (Number(user.prompt_tokens) || 0) + (Number(user.completion_tokens) || 0);
    tr.appendChild(element('td', 'admin-used', numbers.format(used)));

    var quotaCell = element('td', 'admin-quota');
    var form = element('form', 'admin-quota-form');
    form.noValidate = true;
    var input = element('input', 'field admin-quota-input');
    input.type = 'number';
    input.min = '0';
    input.step = '1';
    input.inputMode = 'numeric';
    input.placeholder = 'default';
    input.setAttribute('aria-label', 'Daily token quota for ' + user.email + ' (empty: the default; 0: none)');
    if (user.own_quota) input.value = String(Number(user.quota_tokens_per_day) || 0);
    var note = element('span', 'admin-quota-note', user.own_quota ? 'own' : 'default: ' + quotaText(user));
    form.appendChild(input);
    form.appendChild(button('Set', function () { form.requestSubmit(); }));
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      var raw = input.value.trim();
      var value = raw === '' ? null : Number(raw);
      if (value !== null && !(Number.isInteger(value) && value >= 0)) {
        setError('A quota is a whole number of tokens (0: none), or empty for the default.');
        input.focus();
        return;
      }
      change('PUT', '/admin/users/' + encodeURIComponent(user.user_id) + '/quota', { quota_tokens_per_day: value });
    });
    quotaCell.appendChild(form);
    quotaCell.appendChild(note);
    tr.appendChild(quotaCell);

    var status = [];
    if (user.is_admin) status.push('administrator');
    status.push(user.disabled ? 'disabled' : 'active');
    tr.appendChild(element('td', 'admin-status' + (user.disabled ? ' is-disabled' : ''), status.join(', ')));

    var cell = element('td', 'admin-actions');
    var actions = element('div', 'admin-buttons');
    cell.appendChild(actions);
    var selfNote = self ? 'You cannot change this for your own account.' : '';
    actions.appendChild(button(user.disabled ? 'Enable' : 'Disable', function () {
      if (!user.disabled && !window.confirm('Disable ' + user.email + '? They are signed out everywhere at once.')) return;
      change('PATCH', '/admin/users/' + encodeURIComponent(user.user_id), { disabled: !user.disabled });
    }, self, selfNote));
    actions.appendChild(button(user.is_admin ? 'Remove administrator' : 'Make administrator', function () {
      change('PATCH', '/admin/users/' + encodeURIComponent(user.user_id), { is_admin: !user.is_admin });
    }, self, selfNote));
    tr.appendChild(cell);
    return tr;
  }

  /** One change, then the list again (the server's word is what shows). */
  function change(method, path, body) {
    if (state.busy) return;
    state.busy = true;
    setError('');
    api(method, path, body).then(load, function (err) { setError(err.message); }).then(function () {
      state.busy = false;
    });
  }

  load();
})();
