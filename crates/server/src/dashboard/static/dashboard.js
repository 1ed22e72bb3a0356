// Navigator dashboard: keeps the status column of the forwards table live.
// The page works without this script; it only refreshes statuses in place
// (no re-render, so keyboard focus stays where it is).
(function () {
  'use strict';
  var table = document.querySelector('table[data-forwards]');
  if (!table) return;
  var live = table.querySelector('[data-live]');
  var INTERVAL_MS = 2000;

  function update(forward) {
    var rows = table.querySelectorAll('tr[data-forward-id]');
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute('data-forward-id') !== forward.id) continue;
      var status = rows[i].querySelector('[data-status]');
      var reason = rows[i].querySelector('[data-reason]');
      if (status && status.textContent !== forward.status) {
        status.textContent = forward.status;
        status.className = 'status status-' + String(forward.status).toLowerCase();
      }
      if (reason) reason.textContent = forward.status_reason || '';
    }
  }

  function refresh() {
    fetch('/dashboard/status.json', {
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { Accept: 'application/json' }
    }).then(function (response) {
      if (response.status === 401) {
        window.location.assign('/dashboard/login?expired=1');
        return null;
      }
      if (!response.ok) throw new Error('HTTP ' + response.status);
      return response.json();
    }).then(function (data) {
      if (!data) return;
      data.forwards.forEach(update);
      if (live && live.textContent) live.textContent = '';
    }).catch(function () {
      if (live) live.textContent = '(status refresh failed; retrying)';
    }).then(function () {
      window.setTimeout(refresh, INTERVAL_MS);
    });
  }

  window.setTimeout(refresh, INTERVAL_MS);
})();
