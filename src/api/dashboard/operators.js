// Operators at scale, on the dashboard: bulk retry and cancel (by ticked rows, or by the
// list's filter with a dry-run count to confirm), a run's steps drawn as the graph they
// are, and rates over time as charts. Plain JS and SVG, no build step; app.js calls in
// through window.offboardOperators and shares its helpers as window.offboard.
'use strict';

(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const CHART_EVERY_MS = 3000;
  const $ = (selector) => document.querySelector(selector);
  let o; // window.offboard, set in start()

  const ticked = new Set();
  const charts = { last: 0, busy: false };
  let selectedStep = null;
  let pendingBulk = null;

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- Runs list: ticks, the id tail, copy --------------------------------------------

  function decorateRunRow(row, run) {
    const box = o.el('input', { type: 'checkbox', class: 'tick-run', title: `Tick run ${run.id}` });
    box.checked = ticked.has(run.id);
    box.dataset.runId = run.id;
    box.addEventListener('change', () => {
      if (box.checked) ticked.add(run.id); else ticked.delete(run.id);
      updateTicked();
    });
    row.prepend(o.el('td', { class: 'tick' }, box));
    const copy = o.el('button', { type: 'button', class: 'copy', title: `Copy ${run.id}`, text: 'copy' });
    copy.addEventListener('click', () => copyText(run.id, copy));
    row.children[1].append(copy);
  }

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = 'copied';
    } catch {
      window.prompt('Copy the run id', text);
    }
    setTimeout(() => { button.textContent = 'copy'; }, 1200);
  }

  function updateTicked() {
    const n = ticked.size;
    $('#bulk-selected').textContent = n ? `${n} run${n === 1 ? '' : 's'} ticked` : 'No run ticked.';
    $('#bulk-retry-selected').disabled = n === 0;
    $('#bulk-cancel-selected').disabled = n === 0;
  }

  // ---- Bulk actions ----------------------------------------------------------------------

  function currentFilter() {
    const filter = {};
    for (const [k, v] of Object.entries(o.state.filters)) {
      if (!v) continue;
      filter[k] = k === 'company_id' ? Number(v) : v;
    }
    return filter;
  }

  function describe(filter) {
    const parts = Object.entries(filter).map(([k, v]) => `${k}=${v}`);
    return parts.length ? parts.join(', ') : 'no filter (every run)';
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: 'POST',
      cache: 'no-store',
      headers: {
        Authorization: `Bearer ${localStorage.getItem('offboard.token') ?? 'offboard-dev-token'}`,
        'Content-Type': 'application/json',
        Accept: 'application/json',
      },
      body: JSON.stringify(body),
    });
    const value = await response.json().catch(() => null);
    if (!response.ok) {
      const error = value && value.error;
      throw new o.ApiError(response.status, (error && error.code) || `http_${response.status}`,
        (error && error.message) || response.statusText);
    }
    return value;
  }

  function progress(text, fraction) {
    $('#bulk-progress').hidden = false;
    $('#bulk-progress-text').textContent = text;
    $('#bulk-progress-bar').style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  }

  async function askFilter(kind) {
    const filter = currentFilter();
    try {
      const dry = await post(`/v1/offboardings/bulk-${kind}`, { filter, dry_run: true });
      pendingBulk = { kind, filter };
      const verb = kind === 'retry' ? 'Retry the dead steps of' : 'Cancel';
      $('#bulk-confirm-text').textContent =
        `${verb} ${dry.matched} run${dry.matched === 1 ? '' : 's'} matching ${describe(dry.filter)}?`;
      $('#bulk-confirm').dataset.count = String(dry.matched);
      $('#bulk-confirm').hidden = false;
    } catch (e) {
      progress(`${kind} refused — ${e}`, 0);
    }
  }

  async function confirmFilter() {
    const pending = pendingBulk;
    $('#bulk-confirm').hidden = true;
    if (!pending) return;
    pendingBulk = null;
    try {
      const op = await post(`/v1/offboardings/bulk-${pending.kind}`, { filter: pending.filter });
      followOperation(op);
    } catch (e) {
      progress(`${pending.kind} refused — ${e}`, 0);
    }
  }

  async function followOperation(op) {
    const box = $('#bulk-progress');
    box.dataset.operation = op.id;
    for (;;) {
      const fraction = op.matched ? op.touched / op.matched : 1;
      const verb = op.kind === 'retry' ? 'retried' : 'canceled';
      box.dataset.status = op.status;
      progress(`Bulk ${op.kind} ${o.shortId(op.id)}: ${op.touched} of ${op.matched} runs ${verb}` +
        ` in ${op.chunks} chunk${op.chunks === 1 ? '' : 's'} — ${op.status}`, op.status === 'succeeded' ? 1 : fraction);
      if (op.status !== 'running' || box.dataset.operation !== op.id) break;
      await new Promise((resolve) => setTimeout(resolve, 500));
      try {
        op = await o.api('GET', `/v1/bulk-operations/${op.id}`);
      } catch (e) {
        progress(`following the operation failed — ${e}`, 0);
        return;
      }
    }
    o.poll();
  }

  async function actOnTicked(kind) {
    const ids = [...ticked];
    if (!ids.length) return;
    const verb = kind === 'retry' ? 'Retry the dead steps of' : 'Cancel';
    $('#bulk-confirm-text').textContent = `${verb} ${ids.length} ticked run${ids.length === 1 ? '' : 's'}?`;
    $('#bulk-confirm').dataset.count = String(ids.length);
    $('#bulk-confirm').hidden = false;
    pendingBulk = { kind, ids };
  }

  async function confirm() {
    const pending = pendingBulk;
    if (pending && pending.ids) {
      $('#bulk-confirm').hidden = true;
      pendingBulk = null;
      let done = 0;
      const refused = [];
      for (const id of pending.ids) {
        try {
          await post(`/v1/offboardings/${id}/${pending.kind}`, {});
          done += 1;
        } catch (e) {
          refused.push(`${o.shortId(id)}: ${e.code}`);
        }
        progress(`${pending.kind}: ${done} of ${pending.ids.length} ticked runs`, done / pending.ids.length);
      }
      if (refused.length) progress(`${pending.kind}: ${done} done, refused ${refused.join(', ')}`, 1);
      ticked.clear();
      updateTicked();
      o.poll();
      return;
    }
    await confirmFilter();
  }

  // ---- The run's graph -------------------------------------------------------------------

  const NODE_W = 170;
  const NODE_H = 46;
  const GAP_X = 60;
  const GAP_Y = 14;

  /** Columns by longest path from a step without dependencies. */
  function layout(steps) {
    const byName = new Map(steps.map((s) => [s.name, s]));
    const depth = new Map();
    const depthOf = (name, seen = new Set()) => {
      if (depth.has(name)) return depth.get(name);
      if (seen.has(name)) return 0;
      seen.add(name);
      const step = byName.get(name);
      const d = step && step.depends_on.length
        ? 1 + Math.max(...step.depends_on.filter((n) => byName.has(n)).map((n) => depthOf(n, seen)), -1)
        : 0;
      depth.set(name, d);
      return d;
    };
    const columns = [];
    for (const step of steps) {
      const d = depthOf(step.name);
      (columns[d] ||= []).push(step);
    }
    const positions = new Map();
    const tallest = Math.max(...columns.map((c) => c.length));
    columns.forEach((column, x) => {
      const offset = ((tallest - column.length) * (NODE_H + GAP_Y)) / 2;
      column.forEach((step, y) => {
        positions.set(step.name, { x: 10 + x * (NODE_W + GAP_X), y: 10 + offset + y * (NODE_H + GAP_Y) });
      });
    });
    return {
      positions,
      width: 20 + columns.length * (NODE_W + GAP_X) - GAP_X,
      height: 20 + tallest * (NODE_H + GAP_Y) - GAP_Y,
    };
  }

  function fraction(step) {
    if (step.status === 'succeeded' || step.status === 'skipped') return 1;
    return step.total ? step.done / step.total : 0;
  }

  function drawGraph(run) {
    const box = $('#run-graph');
    const { positions, width, height } = layout(run.steps);
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img',
      'aria-label': `steps of run ${run.id} and what waits on what` });
    for (const step of run.steps) {
      const to = positions.get(step.name);
      for (const dep of step.depends_on) {
        const from = positions.get(dep);
        if (!from) continue;
        const x1 = from.x + NODE_W;
        const y1 = from.y + NODE_H / 2;
        const x2 = to.x;
        const y2 = to.y + NODE_H / 2;
        const mid = (x1 + x2) / 2;
        root.append(svg('path', { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, class: 'edge' }));
      }
    }
    for (const step of run.steps) {
      const at = positions.get(step.name);
      const g = svg('g', { class: `node s-${step.status}${selectedStep === step.name ? ' selected' : ''}`,
        transform: `translate(${at.x},${at.y})`, 'data-step': step.name, 'data-status': step.status, tabindex: '0' });
      g.append(svg('rect', { width: NODE_W, height: NODE_H, rx: 7, class: 'box' }));
      g.append(svg('text', { x: 9, y: 17, class: 'name' }, step.name));
      const attempts = step.attempts ? ` · ${step.attempts}×` : '';
      const counted = step.total ? ` ${step.done}/${step.total}` : '';
      g.append(svg('text', { x: 9, y: 32, class: 'state' }, `${step.status}${counted}${attempts}`));
      g.append(svg('rect', { x: 9, y: 37, width: NODE_W - 18, height: 4, rx: 2, class: 'track' }));
      g.append(svg('rect', { x: 9, y: 37, width: (NODE_W - 18) * fraction(step), height: 4, rx: 2, class: 'done' }));
      g.append(svg('title', {}, `${step.name}: ${step.status}${step.last_error ? ` — ${step.last_error.code}` : ''}`));
      const open = () => { selectedStep = step.name; showStep(run); drawGraph(run); };
      g.addEventListener('click', open);
      g.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
      root.append(g);
    }
    box.replaceChildren(root);
  }

  function showStep(run) {
    const box = $('#step-detail');
    const step = run.steps.find((s) => s.name === selectedStep);
    if (!step) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.dataset.step = step.name;
    const row = (label, value) => o.el('div', {}, o.el('dt', { text: label }), o.el('dd', { text: value ?? '–' }));
    // The step's own events, and run events that name it (a retry, a restart).
    const events = (run.history || []).filter((e) => e.step === step.name ||
      (e.detail && Array.isArray(e.detail.steps) && e.detail.steps.includes(step.name)));
    const restartable = run.status === 'failed' || run.status === 'canceled';
    const restart = o.el('button', { type: 'button', id: 'restart-step', class: 'primary',
      text: `Restart from ${step.name}`, hidden: !restartable });
    restart.addEventListener('click', async () => {
      restart.disabled = true;
      try {
        const body = await post(`/v1/offboardings/${run.id}/restart`, { step: step.name });
        note.textContent = `Restarted: ${body.steps.join(', ')} back in line.`;
      } catch (e) {
        note.textContent = `restart refused — ${e}`;
        note.classList.add('bad');
      } finally {
        restart.disabled = false;
        o.poll();
      }
    });
    const note = o.el('p', { class: 'small', id: 'restart-result' });
    box.replaceChildren(
      o.el('h3', {}, o.el('code', { text: step.name }), ' ', o.badge(step.status)),
      o.el('dl', { class: 'facts' },
        row('Attempts', `${step.attempts} of ${step.max_attempts}`),
        row('Progress', step.total ? `${step.done}/${step.total}` : String(step.done)),
        row('Waits on', step.depends_on.join(', ') || 'nothing'),
        row('Started', o.when(step.started_at)),
        row('Finished', o.when(step.finished_at)),
        row('Last error', step.last_error ? `${step.last_error.code}: ${step.last_error.message || ''}` : 'none'),
        row('Counts', o.compact(step.counts) || '–')),
      o.el('h4', { text: 'Attempts and events' }),
      events.length
        ? o.el('ul', { class: 'events' }, ...events.map((e) => o.el('li', {
          text: `${o.when(e.at)} ${e.kind} by ${e.actor} ${o.compact(e.detail)}` })))
        : o.el('p', { class: 'muted small', text: 'No event recorded for this step yet.' }),
      o.el('h4', { text: 'Calls to outside systems' }),
      (step.calls || []).length
        ? o.el('table', { class: 'grid compact calls', id: 'step-calls' },
          o.el('thead', {}, o.el('tr', {}, ...['Call', 'Destination', 'Status', 'Attempts', 'Last code', 'Error', 'ms']
            .map((h) => o.el('th', { text: h })))),
          o.el('tbody', {}, ...step.calls.map((c) => o.el('tr', {},
            o.el('td', { text: `${c.kind} ${c.target_id}` }),
            o.el('td', {}, o.el('code', { text: c.destination })),
            o.el('td', {}, o.badge(c.status)),
            o.el('td', { text: String(c.attempts) }),
            o.el('td', { text: c.last_status_code ?? '–' }),
            o.el('td', { text: c.last_error ?? '' }),
            o.el('td', { text: c.last_latency_ms ?? '–' })))))
        : o.el('p', { class: 'muted small', id: 'step-calls',
          text: 'None: this step made no call to an outside system (OAuth revocations and vendor callbacks are listed here).' }),
      restart, note);
  }

  function runShown(run) {
    if (selectedStep && !run.steps.some((s) => s.name === selectedStep)) selectedStep = null;
    if ($('#run-graph').dataset.runId !== run.id) {
      selectedStep = null;
      $('#run-graph').dataset.runId = run.id;
    }
    drawGraph(run);
    showStep(run);
  }

  // ---- Charts ------------------------------------------------------------------------------

  function drawChart(id, lines, points) {
    const figure = $(`#${id}`);
    const chart = figure.querySelector('svg');
    const W = 300;
    const H = 110;
    const PAD = 4;
    const values = lines.flatMap((l) => points.map((p) => p[l.key]).filter((v) => v !== null && v !== undefined));
    const max = Math.max(1, ...values);
    const x = (i) => (points.length <= 1 ? W : (i / (points.length - 1)) * W);
    const y = (v) => H - PAD - (v / max) * (H - 2 * PAD - 12);
    const parts = [
      svg('line', { x1: 0, y1: H - PAD, x2: W, y2: H - PAD, class: 'axis' }),
      svg('text', { x: 3, y: 11, class: 'max' }, `max ${Number.isInteger(max) ? max : max.toFixed(2)}`),
    ];
    for (const line of lines) {
      let d = '';
      let open = false;
      points.forEach((p, i) => {
        const v = p[line.key];
        if (v === null || v === undefined) { open = false; return; }
        d += `${open ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
        open = true;
      });
      if (d) parts.push(svg('path', { d, class: `line ${line.class}`, 'vector-effect': 'non-scaling-stroke' }));
      // Dots too, so a lone point (a short burst in a long window) shows.
      points.forEach((p, i) => {
        const v = p[line.key];
        if (v === null || v === undefined || v === 0) return;
        parts.push(svg('circle', { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, class: `dot ${line.class}` }));
      });
    }
    chart.replaceChildren(...parts);
    const last = [...points].reverse().find((p) => lines.some((l) => p[l.key] !== null && p[l.key] !== undefined));
    const fmt = (v) => (v === null || v === undefined ? '–' : Number.isInteger(v) ? String(v) : v.toFixed(2));
    const now = last ? lines.map((l) => `${l.label ? `${l.label} ` : ''}${fmt(last[l.key])}`).join(' · ') : 'no samples';
    figure.querySelector('.now').textContent = now;
    figure.dataset.points = String(values.length);
    figure.dataset.max = String(max);
  }

  async function refreshCharts(force) {
    if (charts.busy || (!force && Date.now() - charts.last < CHART_EVERY_MS)) return;
    charts.busy = true;
    try {
      const window = Number($('#chart-window').value) || 3600;
      const series = await o.api('GET', `/v1/stats/series?window=${window}&step=${Math.max(1, Math.round(window / 60))}`);
      const points = series.points;
      drawChart('chart-finished', [{ key: 'steps_finished_per_s', class: 'ok' }], points);
      drawChart('chart-failures', [
        { key: 'failures_per_s', class: 'bad', label: 'failures' },
        { key: 'retries_per_s', class: 'warn', label: 'retries' }], points);
      drawChart('chart-depth', [{ key: 'queue_depth', class: 'run' }], points);
      drawChart('chart-in-flight', [{ key: 'in_flight', class: 'run' }], points);
      drawChart('chart-p95', [{ key: 'p95_ms', class: 'ink' }], points);
      $('#charts-note').textContent =
        `${series.step_seconds} s a point · p95 over the window ${series.p95_ms ?? '–'} ms · to ${o.when(series.to)}`;
      $('#charts').dataset.state = 'ok';
      charts.last = Date.now();
    } catch (e) {
      $('#charts').dataset.state = 'unavailable';
      $('#charts-note').textContent = e.code === 'unscoped_token_required'
        ? 'Charts are service-wide: they need an unscoped token.'
        : `charts unavailable — ${e}`;
      charts.last = Date.now();
    } finally {
      charts.busy = false;
    }
  }

  function start() {
    o = window.offboard;
    $('#bulk-retry-filter').addEventListener('click', () => askFilter('retry'));
    $('#bulk-cancel-filter').addEventListener('click', () => askFilter('cancel'));
    $('#bulk-retry-selected').addEventListener('click', () => actOnTicked('retry'));
    $('#bulk-cancel-selected').addEventListener('click', () => actOnTicked('cancel'));
    $('#bulk-confirm-yes').addEventListener('click', confirm);
    $('#bulk-confirm-no').addEventListener('click', () => { pendingBulk = null; $('#bulk-confirm').hidden = true; });
    $('#tick-all').addEventListener('change', (event) => {
      for (const box of document.querySelectorAll('#runs .tick-run')) {
        box.checked = event.currentTarget.checked;
        if (box.checked) ticked.add(box.dataset.runId); else ticked.delete(box.dataset.runId);
      }
      updateTicked();
    });
    $('#chart-window').addEventListener('change', () => refreshCharts(true));
    updateTicked();
  }

  window.offboardOperators = { start, decorateRunRow, runShown, refreshCharts };
})();
