// Batches on the dashboard (#/batches, #/batches/<id>): the newest batches, and one batch
// with a single progress bar over its runs, its runs by status, items moved, an ETA, its
// refused rows, a link to its runs in the list (filter batch_id) and a cancel. Plain JS;
// app.js routes here through window.offboardBatches and shares its helpers as
// window.offboard. Text is set with textContent only.
'use strict';

(() => {
  const $ = (selector) => document.querySelector(selector);
  let o; // window.offboard, set in start()

  function eta(seconds) {
    if (seconds === null || seconds === undefined) return 'after the first run ends';
    if (seconds === 0) return 'done';
    const m = Math.floor(seconds / 60);
    return m ? `${m} min ${seconds % 60} s` : `${seconds} s`;
  }

  function progressOf(batch) {
    const runs = batch.runs;
    return runs.total ? runs.finished / runs.total : 1;
  }

  async function refreshList(stillCurrent) {
    const body = await o.api('GET', '/v1/offboarding-batches?limit=50');
    if (!stillCurrent()) return;
    const rows = body.batches.map((b) => o.el('tr', { 'data-batch-id': b.id },
      o.el('td', {}, o.el('a', { href: `#/batches/${b.id}`, text: o.shortId(b.id), title: b.id })),
      o.el('td', { text: o.when(b.created_at) }),
      o.el('td', {}, o.badge(b.status)),
      o.el('td', { text: `${b.rows_accepted} / ${b.rows_total}` }),
      o.el('td', { text: String(b.rows_refused) }),
      o.el('td', { class: 'progress' }, o.bar(progressOf(b), b.runs.finished === b.runs.total ? 'succeeded' : 'running'),
        o.el('span', { class: 'muted', text: ` ${b.runs.finished}/${b.runs.total}` })),
      o.el('td', { text: b.submitted_by })));
    $('#batches tbody').replaceChildren(...rows);
    $('#batches-empty').hidden = rows.length > 0;
  }

  async function refreshBatch(id, stillCurrent) {
    const b = await o.api('GET', `/v1/offboarding-batches/${id}`);
    if (!stillCurrent()) return;
    const runs = b.runs;
    $('#batch-title').textContent = `Batch ${b.id}`;
    $('#batch-status').replaceChildren(o.badge(b.status));
    $('#batch-rows').textContent =
      `${b.rows_total} rows (${b.format}${b.all_or_nothing ? ', all or nothing' : ''}): ${b.rows_accepted} accepted, ${b.rows_refused} refused`;
    $('#batch-submitted').textContent = `${b.submitted_by}, ${o.when(b.created_at)}`;
    const done = runs.finished === runs.total;
    $('#batch-bar').replaceChildren(o.bar(progressOf(b), done ? 'succeeded' : 'running'));
    $('#batch-progress').textContent =
      `${runs.finished} of ${runs.total} runs ended · ${runs.items_moved} items moved · ` +
      `${runs.runs_per_second ?? '–'} runs/s · ETA ${eta(runs.eta_seconds)}`;
    $('#batch-statuses').replaceChildren(...Object.entries(runs.by_status).map(([status, n]) =>
      o.el('span', { class: 'count' }, o.badge(status), ` ${n}`)));
    $('#batch-runs-link').href = `#/?batch_id=${b.id}`;
    $('#batch-cancel').hidden = done;
    $('#batch-cancel').dataset.batchId = b.id;
    const refused = b.refused.map((r) => o.el('tr', {},
      o.el('td', { text: String(r.row) }),
      o.el('td', { text: r.code }),
      o.el('td', { text: r.field || '–' }),
      o.el('td', { text: r.message })));
    $('#batch-refused tbody').replaceChildren(...refused);
    $('#batch-refused').hidden = refused.length === 0;
  }

  // The route's batch (or the list when none); app.js calls this on each poll.
  function refresh(id, stillCurrent) {
    $('#batches-list').hidden = Boolean(id);
    $('#batch-detail').hidden = !id;
    return id ? refreshBatch(id, stillCurrent) : refreshList(stillCurrent);
  }

  async function cancel(button) {
    const id = button.dataset.batchId;
    if (!id || !window.confirm(`Cancel every run of batch ${id} that has not ended?`)) return;
    button.disabled = true;
    try {
      const op = await o.api('POST', `/v1/offboarding-batches/${id}/cancel`);
      const note = $('#batch-result');
      note.textContent = `Canceling ${op.matched} runs (bulk operation ${op.id}).`;
      note.hidden = false;
    } finally {
      button.disabled = false;
      o.poll();
    }
  }

  function start() {
    o = window.offboard;
    $('#batch-cancel').addEventListener('click', (event) => cancel(event.currentTarget));
  }

  window.offboardBatches = { start, refresh };
})();
