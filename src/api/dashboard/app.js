// The operators' dashboard: plain JS, no build step. Every number on the page comes from
// the /v1 API, called with the operator's bearer token (kept in localStorage). The page
// polls once a second; routes live in the URL fragment (#/?status=failed, #/runs/<id>).
// Text is always set with textContent: nothing from the API is parsed as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'offboard.token';
  // Accepted by the API only while it listens on a loopback address.
  const DEV_TOKEN = 'offboard-dev-token';
  const POLL_MS = 1000;
  const PAGE = 50;
  // Runs a cancel applies to (a canceling run is already stopping).
  const CANCELABLE = ['scheduled', 'awaiting_approval', 'queued', 'running', 'failed'];

  const $ = (selector) => document.querySelector(selector);

  // The runs list's filter fields, in the URL and in the form (operators.js adds the
  // fields of a step in a state, a time range and a run id fragment).
  const FILTER_FIELDS = ['company_id', 'status', 'action', 'step', 'step_status',
    'created_after', 'created_before', 'id_prefix', 'id_suffix', 'batch_id'];
  const emptyFilters = () => Object.fromEntries(FILTER_FIELDS.map((f) => [f, '']));

  const state = {
    filters: emptyFilters(),
    limit: PAGE,
    run: null, // the run shown on the run page, as last read
  };

  // ---- API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }

    toString() {
      const status = this.status ? `${this.status} ` : '';
      return `${status}${this.code}: ${this.message}`;
    }
  }

  function token() {
    return localStorage.getItem(TOKEN_KEY) ?? DEV_TOKEN;
  }

  async function api(method, path) {
    let response;
    try {
      response = await fetch(path, {
        method,
        cache: 'no-store',
        headers: { Authorization: `Bearer ${token()}`, Accept: 'application/json' },
      });
    } catch (e) {
      throw new ApiError(0, 'unreachable', `the API does not answer (${e.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // Not JSON: reported below by status.
    }
    if (!response.ok) {
      const error = body && body.error;
      throw new ApiError(
        response.status,
        (error && error.code) || `http_${response.status}`,
        (error && error.message) || response.statusText || 'request failed',
      );
    }
    return body;
  }

  // ---- Small DOM helpers -----------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('data-')) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(selector, text) {
    $(selector).textContent = text ?? '–';
  }

  function badge(status) {
    return el('span', { class: `badge s-${status}`, text: status, 'data-status': status });
  }

  function bar(fraction, status) {
    const fill = el('div', { class: `fill s-${status || ''}` });
    fill.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
    return el('div', { class: 'bar' }, fill);
  }

  function when(iso) {
    if (!iso) return '–';
    const at = new Date(iso);
    const today = new Date().toDateString() === at.toDateString();
    return today ? at.toLocaleTimeString() : at.toLocaleString();
  }

  function duration(from, to) {
    if (!from) return '';
    const ms = (to ? new Date(to) : new Date()) - new Date(from);
    if (ms < 0) return '';
    if (ms < 1000) return `${ms} ms`;
    if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.round(ms / 60_000)} min`;
  }

  // Run ids are UUIDv7: the first digits are the creation time, the same for every run of
  // one second. The tail (the random part) tells two runs apart at a glance.
  function shortId(id) {
    return `…${id.replace(/-/g, '').slice(-12)}`;
  }

  function compact(value) {
    if (value === null || value === undefined) return '';
    if (typeof value !== 'object') return String(value);
    if (Array.isArray(value)) return value.length ? `[${value.join(', ')}]` : '[]';
    return Object.entries(value)
      .map(([k, v]) => `${k}: ${typeof v === 'object' && v !== null ? JSON.stringify(v) : v}`)
      .join(', ');
  }

  // ---- Errors and the live indicator -----------------------------------------------

  function showError(error) {
    const box = $('#error');
    box.textContent = `API error — ${error}`;
    box.dataset.code = error.code || 'error';
    box.hidden = false;
  }

  function clearError() {
    const box = $('#error');
    box.hidden = true;
    box.textContent = '';
    delete box.dataset.code;
  }

  function setLive(ok) {
    const live = $('#live');
    live.dataset.state = ok ? 'ok' : 'down';
    setText('#live-text', ok ? `live · ${new Date().toLocaleTimeString()}` : 'not updating');
  }

  function showResult(text, isError, selector = '#action-result') {
    const box = $(selector);
    box.textContent = text;
    box.classList.toggle('error', Boolean(isError));
    box.hidden = false;
  }

  // ---- Routes ----------------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const match = hash.match(/^\/runs\/([0-9a-fA-F-]{36})$/);
    if (match) return { view: 'run', id: match[1] };
    const batch = hash.match(/^\/batches(?:\/([0-9a-fA-F-]{36}))?$/);
    if (batch) return { view: 'batches', id: batch[1] || null };
    const query = new URLSearchParams(hash.split('?')[1] || '');
    if (hash.startsWith('/webhooks')) {
      return {
        view: 'webhooks',
        filters: { endpoint_id: query.get('endpoint_id') || '', status: query.get('status') || '' },
      };
    }
    const filters = emptyFilters();
    for (const f of FILTER_FIELDS) filters[f] = query.get(f) || '';
    return { view: 'list', filters };
  }

  function listHash(filters) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    const text = query.toString();
    return text ? `#/?${text}` : '#/';
  }

  function show(view) {
    $('#list-view').hidden = view !== 'list';
    $('#run-view').hidden = view !== 'run';
    $('#webhooks-view').hidden = view !== 'webhooks';
    $('#batches-view').hidden = view !== 'batches';
  }

  // ---- Stats -----------------------------------------------------------------------

  async function refreshStats(stillCurrent) {
    const company = state.filters.company_id;
    const stats = await api('GET', `/v1/stats${company ? `?company_id=${encodeURIComponent(company)}` : ''}`);
    if (!stillCurrent()) return;
    const depth = stats.queue_depth;
    if (depth) {
      setText('#stat-queue', depth.steps.active + depth.steps.scheduled);
      setText('#stat-queue-note', `steps in Redis (${depth.steps.scheduled} delayed) · ${depth.purges.active + depth.purges.scheduled} purges`);
    } else {
      setText('#stat-queue', '–');
      setText('#stat-queue-note', 'shown to unscoped tokens while Redis answers');
    }
    setText('#stat-in-flight', stats.in_flight);
    setText('#stat-throughput', `${stats.throughput.steps_succeeded} / min`);
    setText('#stat-due-purges', stats.purges.due);
    $('#stat-due-purges').classList.toggle('warn', stats.purges.due > 0);
    setText('#stat-purges-note', `${stats.purges.scheduled} scheduled · ${stats.purges.done} done`);
    setText('#stat-dead', stats.steps.dead);
    $('#stat-dead').classList.toggle('warn', stats.steps.dead > 0);
    const breakers = stats.open_breakers;
    if (Array.isArray(breakers)) {
      setText('#stat-breakers', breakers.length);
      $('#stat-breakers').classList.toggle('warn', breakers.length > 0);
      setText('#stat-breakers-note', breakers.length
        ? breakers.map((b) => `${b.host} ${b.state.replace('_', '-')}`).join(' · ')
        : 'no outside destination paused');
    } else {
      setText('#stat-breakers', '–');
      setText('#stat-breakers-note', 'shown to unscoped tokens');
    }
    const runs = $('#stat-runs');
    runs.replaceChildren(
      ...Object.entries(stats.runs).map(([status, n]) =>
        el('span', { class: `count s-${status}`, 'data-status': status }, `${status} `, el('b', { text: n }))),
    );
    setText('#stat-scope', stats.company_id ? `company ${stats.company_id}` : 'all companies');
  }

  // ---- Runs list -------------------------------------------------------------------

  function syncFilterForm(filters) {
    const form = $('#filters');
    for (const [name, value] of Object.entries(filters)) {
      const input = form.elements[name];
      if (!input) continue;
      if (document.activeElement !== input && input.value !== value) input.value = value;
    }
  }

  async function refreshList(filters, stillCurrent) {
    const query = new URLSearchParams({ limit: String(state.limit) });
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    const body = await api('GET', `/v1/offboardings?${query}`);
    if (!stillCurrent()) return;
    const rows = body.runs.map((run) => {
      const done = run.steps_total ? run.steps_succeeded / run.steps_total : 0;
      const steps = el('td', { class: 'steps-cell' },
        bar(done, run.status),
        el('span', { text: `${run.steps_succeeded}/${run.steps_total}` }),
        run.steps_dead ? el('span', { class: 'dead-count', text: `${run.steps_dead} dead` }) : null);
      const link = el('a', { href: `#/runs/${run.id}`, title: run.id }, el('code', { text: shortId(run.id) }));
      const row = el('tr', { 'data-run-id': run.id, 'data-status': run.status },
        el('td', {}, link),
        el('td', { text: run.company_id }),
        el('td', { text: run.user_id }),
        el('td', { text: run.action }),
        el('td', {}, badge(run.status),
          run.error_code ? el('span', { class: 'muted small', text: ` ${run.error_code}` }) : null,
          run.status === 'scheduled' && run.effective_at
            ? el('span', { class: 'muted small due', text: ` due ${when(run.effective_at)}` }) : null),
        steps,
        el('td', { text: when(run.created_at) }),
        el('td', { text: when(run.finished_at) }));
      if (window.offboardOperators) window.offboardOperators.decorateRunRow(row, run);
      return row;
    });
    $('#runs tbody').replaceChildren(...rows);
    $('#runs-empty').hidden = rows.length > 0;
    $('#more').hidden = !body.next_cursor || state.limit >= 500;
    setText('#runs-count', `${rows.length} run${rows.length === 1 ? '' : 's'}, newest first`);
  }

  // ---- Run page --------------------------------------------------------------------

  function stepProgress(step) {
    const finished = step.status === 'succeeded' || step.status === 'skipped';
    if (step.total) {
      return { fraction: finished ? 1 : step.done / step.total, text: `${step.done}/${step.total}` };
    }
    return { fraction: finished ? 1 : 0, text: finished ? 'done' : step.done ? String(step.done) : '' };
  }

  function attemptsText(step) {
    const text = `${step.attempts}/${step.max_attempts}`;
    if (step.status === 'ready' && step.attempts > 0 && step.next_attempt_at) {
      const wait = new Date(step.next_attempt_at) - new Date();
      if (wait > 0) return `${text} · next in ${(wait / 1000).toFixed(1)} s`;
    }
    return text;
  }

  async function refreshRun(id, stillCurrent) {
    const run = await api('GET', `/v1/offboardings/${encodeURIComponent(id)}`);
    if (!stillCurrent()) return;
    state.run = run;
    const view = $('#run-view');
    view.dataset.runId = run.id;
    view.dataset.status = run.status;
    setText('#run-id', run.id);
    $('#run-status').replaceWith(Object.assign(badge(run.status), { id: 'run-status' }));
    setText('#run-company', run.company_id);
    setText('#run-user', run.user_id);
    setText('#run-action', run.action);
    setText('#run-actor', `user ${run.actor_user_id}`);
    setText('#run-created', when(run.created_at));
    $('#run-due-row').hidden = !run.effective_at;
    setText('#run-due', run.effective_at ? when(run.effective_at) : '');
    const approval = run.approver_user_id
      ? `${run.status === 'rejected' ? 'rejected' : 'approved'} by user ${run.approver_user_id}`
      : run.status === 'awaiting_approval' ? `awaiting a second admin until ${when(run.approval_expires_at)}`
        : run.status === 'expired' ? 'expired unanswered' : '';
    $('#run-approval-row').hidden = !approval;
    setText('#run-approval', approval);
    setText('#run-started', when(run.started_at));
    const took = run.started_at ? duration(run.started_at, run.finished_at) : '';
    const going = ['queued', 'running', 'canceling'].includes(run.status);
    setText('#run-finished', run.finished_at
      ? `${when(run.finished_at)}${took ? ` (${took})` : ''}`
      : `–${going && took ? ` (${took} so far)` : ''}`);

    const { steps_total: total, steps_succeeded: succeeded } = run.progress;
    const fill = $('#run-bar');
    fill.style.width = `${total ? Math.round((succeeded / total) * 100) : 0}%`;
    fill.className = `fill s-${run.status}`;
    setText('#run-progress', `${succeeded}/${total} steps done`);

    const runError = $('#run-error');
    runError.hidden = !run.error;
    runError.textContent = run.error ? `${run.error.code}: ${run.error.message || ''}` : '';

    const dead = run.steps.filter((s) => s.status === 'dead').length;
    $('#retry').hidden = dead === 0;
    $('#retry').textContent = dead === 1 ? 'Retry dead step' : `Retry ${dead} dead steps`;
    $('#cancel').hidden = !CANCELABLE.includes(run.status);

    const rows = run.steps.map((step) => {
      const progress = stepProgress(step);
      const error = step.last_error
        ? el('span', {}, el('code', { text: step.last_error.code }), ` ${step.last_error.message || ''}`)
        : '';
      return el('tr', { 'data-step': step.name, 'data-status': step.status },
        el('td', {}, el('code', { text: step.name })),
        el('td', {}, badge(step.status)),
        el('td', { class: 'num', text: attemptsText(step) }),
        el('td', { class: 'progress-cell' }, bar(progress.fraction, step.status), el('span', { text: progress.text })),
        el('td', { class: 'error-cell' }, error),
        el('td', { class: 'counts', text: compact(step.counts) }));
    });
    $('#steps tbody').replaceChildren(...rows);

    const receipt = $('#receipt');
    receipt.hidden = !run.receipt;
    $('#receipt-pending').hidden = Boolean(run.receipt);
    const receiptText = run.receipt ? JSON.stringify(run.receipt, null, 2) : '';
    if (receipt.textContent !== receiptText) receipt.textContent = receiptText;

    const purge = run.private_email_purge;
    setText('#purge', purge
      ? `#${purge.id} ${purge.status}, due ${when(purge.due_at)}` +
        (purge.fired_at ? `, fired ${when(purge.fired_at)} by ${purge.fired_by}, ${purge.emails_deleted} emails deleted` : '')
      : 'none scheduled');

    if (window.offboardOperators) window.offboardOperators.runShown(run);

    $('#history tbody').replaceChildren(...(run.history || []).map((event) => el('tr', {},
      el('td', { text: when(event.at) }),
      el('td', { text: event.kind }),
      el('td', { text: event.step || '' }),
      el('td', { text: event.actor }),
      el('td', { class: 'counts', text: compact(event.detail) }))));
  }

  async function operate(action, button) {
    const run = state.run;
    if (!run) return;
    button.disabled = true;
    try {
      const body = await api('POST', `/v1/offboardings/${encodeURIComponent(run.id)}/${action}`);
      showResult(action === 'retry'
        ? `Retried: ${body.steps_retried} dead step${body.steps_retried === 1 ? '' : 's'} back in line.`
        : body.status === 'canceling'
          ? `Canceling: ${body.steps_canceled} step${body.steps_canceled === 1 ? '' : 's'} will not run; ` +
            `${body.steps_running} running step${body.steps_running === 1 ? '' : 's'} stop${body.steps_running === 1 ? 's' : ''} at the next batch.`
          : `Canceled: ${body.steps_canceled} step${body.steps_canceled === 1 ? '' : 's'} will not run.`);
    } catch (e) {
      showResult(`${action} refused — ${e}`, true);
    } finally {
      button.disabled = false;
      poll();
    }
  }

  // ---- Webhook deliveries ----------------------------------------------------------

  async function refreshDeliveries(filters, stillCurrent) {
    const query = new URLSearchParams({ limit: '100' });
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    const body = await api('GET', `/v1/webhook-deliveries?${query}`);
    if (!stillCurrent()) return;
    const form = $('#delivery-filters');
    if (document.activeElement !== form.elements.endpoint_id) form.elements.endpoint_id.value = filters.endpoint_id;
    form.elements.status.value = filters.status;
    const rows = body.deliveries.map((d) => {
      const replay = el('button', { type: 'button', class: 'replay', text: 'Replay' });
      replay.hidden = d.status === 'pending' || d.status === 'sending';
      replay.addEventListener('click', () => replayDelivery(d.id, replay));
      const last = d.last_status_code ?? d.last_error ?? '–';
      return el('tr', { 'data-delivery-id': d.id, 'data-status': d.status },
        el('td', { class: 'num', text: d.id }),
        el('td', { text: d.event_type }),
        el('td', {}, el('a', { href: `#/webhooks?endpoint_id=${d.endpoint_id}`, title: d.endpoint_id }, el('code', { text: shortId(d.endpoint_id) }))),
        el('td', {}, badge(d.status)),
        el('td', { class: 'num', text: d.attempts }),
        el('td', { class: 'num', text: String(last), title: d.last_error || '' }),
        el('td', { class: 'num', text: d.last_latency_ms == null ? '–' : `${d.last_latency_ms} ms` }),
        el('td', { text: d.status === 'pending' ? when(d.next_attempt_at) : when(d.finished_at) }),
        el('td', {}, el('code', { class: 'small', text: d.webhook_id })),
        el('td', {}, replay));
    });
    $('#deliveries tbody').replaceChildren(...rows);
    $('#deliveries-empty').hidden = rows.length > 0;
  }

  async function replayDelivery(id, button) {
    button.disabled = true;
    try {
      const body = await api('POST', `/v1/webhook-deliveries/${encodeURIComponent(id)}/replay`);
      showResult(`Replayed: delivery ${body.id} sends ${body.webhook_id} again.`, false, '#webhook-result');
    } catch (e) {
      showResult(`replay refused — ${e}`, true, '#webhook-result');
    } finally {
      button.disabled = false;
      poll();
    }
  }

  // ---- The poll loop ---------------------------------------------------------------

  let timer = null;
  let polling = false;
  let again = false;

  async function poll() {
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    clearTimeout(timer);
    const hash = location.hash;
    const stillCurrent = () => location.hash === hash;
    const current = route();
    try {
      if (current.view === 'list') {
        state.filters = current.filters;
        syncFilterForm(current.filters);
        const charts = window.offboardOperators ? window.offboardOperators.refreshCharts() : null;
        await Promise.all([refreshList(current.filters, stillCurrent), refreshStats(stillCurrent), charts]);
      } else if (current.view === 'batches') {
        await Promise.all([window.offboardBatches.refresh(current.id, stillCurrent), refreshStats(stillCurrent)]);
      } else if (current.view === 'webhooks') {
        await Promise.all([refreshDeliveries(current.filters, stillCurrent), refreshStats(stillCurrent)]);
      } else {
        await Promise.all([refreshRun(current.id, stillCurrent), refreshStats(stillCurrent)]);
      }
      clearError();
      setLive(true);
    } catch (e) {
      showError(e instanceof ApiError ? e : new ApiError(0, 'page_error', e.message));
      setLive(false);
    } finally {
      polling = false;
    }
    if (again) {
      again = false;
      poll();
    } else {
      timer = setTimeout(poll, POLL_MS);
    }
  }

  function onRoute() {
    const current = route();
    show(current.view);
    if (current.view === 'run' && (!state.run || state.run.id !== current.id)) {
      state.run = null;
      $('#action-result').hidden = true;
      $('#retry').hidden = true;
      $('#cancel').hidden = true;
      $('#steps tbody').replaceChildren();
      delete $('#run-view').dataset.status;
    }
    if (current.view === 'list') state.limit = PAGE;
    poll();
  }

  function start() {
    const input = $('#token');
    input.value = token();
    $('#token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      localStorage.setItem(TOKEN_KEY, input.value.trim());
      poll();
    });

    const filters = $('#filters');
    const applyFilters = () => {
      const next = emptyFilters();
      for (const f of FILTER_FIELDS) {
        const input = filters.elements[f];
        if (input) next[f] = input.value.trim();
      }
      const hash = listHash(next);
      if (location.hash !== hash) location.hash = hash;
    };
    filters.addEventListener('change', applyFilters);
    filters.addEventListener('submit', (event) => {
      event.preventDefault();
      applyFilters();
    });
    filters.addEventListener('reset', () => setTimeout(applyFilters));

    $('#more').addEventListener('click', () => {
      state.limit = Math.min(500, state.limit + PAGE);
      poll();
    });
    $('#retry').addEventListener('click', (event) => operate('retry', event.currentTarget));
    $('#cancel').addEventListener('click', (event) => {
      const run = state.run;
      if (run && window.confirm(`Cancel run ${run.id}? Steps not yet started will not run.`)) {
        operate('cancel', event.currentTarget);
      }
    });

    const deliveryFilters = $('#delivery-filters');
    const applyDeliveryFilters = () => {
      const query = new URLSearchParams();
      const endpoint = deliveryFilters.elements.endpoint_id.value.trim();
      if (endpoint) query.set('endpoint_id', endpoint);
      if (deliveryFilters.elements.status.value) query.set('status', deliveryFilters.elements.status.value);
      const text = query.toString();
      const hash = text ? `#/webhooks?${text}` : '#/webhooks';
      if (location.hash !== hash) location.hash = hash;
    };
    deliveryFilters.addEventListener('change', applyDeliveryFilters);
    deliveryFilters.addEventListener('submit', (event) => {
      event.preventDefault();
      applyDeliveryFilters();
    });

    window.addEventListener('hashchange', onRoute);
    // Shared with operators.js (bulk actions, the run's graph, the charts).
    window.offboard = { api, el, badge, bar, when, compact, shortId, poll, state, ApiError };
    if (window.offboardOperators) window.offboardOperators.start();
    if (window.offboardBatches) window.offboardBatches.start();
    onRoute();
  }

  start();
})();
