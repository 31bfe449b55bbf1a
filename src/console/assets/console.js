// taskhook console: live numbers. Pages are complete without this script;
// it only follows the server-sent events named by <body data-events> and
// writes their texts into the elements that show them (textContent only).
(function () {
  'use strict';
  var url = document.body.getAttribute('data-events');
  var status = document.getElementById('live-status');
  if (!url || !window.EventSource) {
    return;
  }
  var has = function (o, k) {
    return o !== null && typeof o === 'object' && Object.prototype.hasOwnProperty.call(o, k);
  };
  var put = function (el, text) {
    if (typeof text === 'string' && el.textContent !== text) {
      el.textContent = text;
    }
  };
  var say = function (text) {
    if (status) {
      put(status, text);
    }
  };

  var overview = function (d) {
    document.querySelectorAll('[data-stat]').forEach(function (el) {
      var k = el.getAttribute('data-stat');
      if (has(d.stats, k)) {
        put(el, d.stats[k]);
      }
    });
    document.querySelectorAll('tr[data-webhook]').forEach(function (row) {
      var name = row.getAttribute('data-webhook');
      if (!has(d.webhooks, name)) {
        return;
      }
      var fields = d.webhooks[name];
      row.querySelectorAll('[data-field]').forEach(function (td) {
        var k = td.getAttribute('data-field');
        if (has(fields, k)) {
          put(td, fields[k]);
        }
      });
    });
  };

  var task = function (d) {
    if (d.gone) {
      say('this task is no longer in the store');
      return;
    }
    document.querySelectorAll('[data-task-field]').forEach(function (el) {
      var k = el.getAttribute('data-task-field');
      if (has(d, k)) {
        put(el, d[k]);
        if (el.hasAttribute('data-status')) {
          el.setAttribute('data-status', d[k]);
        }
      }
    });
    document.querySelectorAll('tr[data-delivery]').forEach(function (row) {
      var id = row.getAttribute('data-delivery');
      if (!has(d.deliveries, id)) {
        return;
      }
      var fields = d.deliveries[id];
      row.querySelectorAll('[data-field]').forEach(function (td) {
        var k = td.getAttribute('data-field');
        if (!has(fields, k) || k === 'next_attempt') {
          return;
        }
        if (k === 'state') {
          var badge = td.querySelector('.badge') || td;
          put(badge, fields.state);
          badge.setAttribute('data-state', fields.state);
        } else {
          put(td, fields[k]);
        }
      });
      var replayable = fields.state === 'failed' || fields.state === 'webhook_removed';
      row.querySelectorAll('.replay-form').forEach(function (f) {
        f.hidden = !replayable;
      });
    });
  };

  // Streams end every few seconds and the browser reconnects at once:
  // only a reconnection that takes a while is worth announcing.
  var slow = null;
  var heard = function () {
    if (slow !== null) {
      clearTimeout(slow);
      slow = null;
    }
  };
  var source = new EventSource(url);
  source.addEventListener('overview', function (e) {
    heard();
    overview(JSON.parse(e.data));
    say('live');
  });
  source.addEventListener('task', function (e) {
    heard();
    task(JSON.parse(e.data));
    say('live');
  });
  source.addEventListener('unavailable', function () {
    heard();
    say('the store is not answering; numbers may be stale');
  });
  source.addEventListener('error', function () {
    if (slow === null) {
      slow = setTimeout(function () {
        say('reconnecting…');
      }, 3000);
    }
  });
  say('connecting…');
})();
