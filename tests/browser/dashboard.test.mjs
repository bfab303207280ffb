// The operators' dashboard in Debian's headless Chromium (driven by playwright-core; no
// browser is downloaded). Builds `offboard`, serves it on a fresh database and Redis prefix
// with the first four stop_syncs attempts failing permanently and the apps' uninstall
// callbacks pointed at a vendor played here, then, in the browser: watches a run wait on its
// vendor (held until the page shows it) and go on to succeeded, opens a run that failed,
// clicks Retry and sees it recover;
// filters the list to runs with a dead stop_syncs, bulk-retries them after the dry-run
// count, opens a run's graph and a node's details, checks the charts drew, and opens a
// batch submitted as CSV (one progress bar, its refused row, its runs in the list). Saves
// target/browser/*.png. Every wait polls with a deadline.
//
//   cd tests/browser && npm ci && npm test
//
// Environment: CHROMIUM (default /usr/bin/chromium), PG_SERVER (default
// postgres://postgres@127.0.0.1:5432), REDIS_URL (default redis://127.0.0.1:6379),
// OFFBOARD_BIN (skip the cargo build and use this binary).

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import http from 'node:http';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const OUT = path.join(ROOT, 'target', 'browser');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PG_SERVER = (process.env.PG_SERVER || 'postgres://postgres@127.0.0.1:5432').replace(/\/$/, '');
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const TOKEN = 'offboard-dev-token';
/** How long any one thing may take to show up (a server start, a run finishing). */
const WAIT_MS = 60_000;

const run = promisify(execFile);
const started = Date.now();
const log = (message) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}`);

/** Polls `probe` until it returns a truthy value; fails with `what` after the deadline. */
async function waitFor(what, probe, { timeout = WAIT_MS, every = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * An app vendor on loopback: answers the uninstall callbacks offboard sends (`POST
 * /apps/<key>/uninstall`) with 200. While `hold()` is on, it keeps them unanswered until
 * `release()`, so a run waits on its vendor for as long as the test needs to see it waiting.
 */
async function startVendor() {
  const held = [];
  let holding = false;
  let received = 0;
  const server = http.createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      received += 1;
      const answer = () => response.writeHead(200, { 'Content-Type': 'application/json' }).end('{}');
      if (holding) held.push(answer); else answer();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    get held() { return held.length; },
    get received() { return received; },
    hold() { holding = true; },
    release() {
      holding = false;
      for (const answer of held.splice(0)) answer();
    },
    close() {
      this.release();
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** `cargo build --bin offboard`; returns the path of the binary cargo reports. */
async function buildOffboard() {
  if (process.env.OFFBOARD_BIN) return process.env.OFFBOARD_BIN;
  const { stdout } = await run(
    'cargo', ['build', '--bin', 'offboard', '--message-format=json-render-diagnostics'],
    { cwd: ROOT, maxBuffer: 64 << 20 },
  );
  const artifact = stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line))
    .find((m) => m.reason === 'compiler-artifact' && m.target?.name === 'offboard' && m.executable);
  assert.ok(artifact, 'cargo did not report the offboard binary');
  return artifact.executable;
}

/** Each step's status on the run page, e.g. {stop_syncs: 'dead', ...}. */
async function stepStatuses(page) {
  return page.$$eval('#steps tbody tr', (rows) =>
    Object.fromEntries(rows.map((r) => [r.dataset.step, r.dataset.status])));
}

/**
 * Waits until the run page shows `want`. Returns what the page showed on the way, e.g.
 * ['queued 0/15', 'running 5/15', 'succeeded 15/15'], each logged as it appears; `seen`
 * goes on from what an earlier watch returned.
 */
async function watchRun(page, label, want, seen = []) {
  await waitFor(`${label} to show ${want} on the run page`, async () => {
    const status = await page.getAttribute('#run-view', 'data-status');
    if (!status) return false;
    const steps = Object.values(await stepStatuses(page));
    const done = steps.filter((s) => s === 'succeeded' || s === 'skipped').length;
    const shown = `${status} ${done}/${steps.length}`;
    if (shown !== seen.at(-1)) {
      log(`${label}: ${shown} steps done`);
      seen.push(shown);
    }
    return status === want;
  }, { every: 50 });
  return seen;
}

test('the dashboard shows a run succeed and a dead step recover after Retry', { timeout: 300_000 }, async (t) => {
  await mkdir(OUT, { recursive: true });
  const suffix = randomBytes(6).toString('hex');
  const database = `offboard_browser_${suffix}`;
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const env = {
    ...process.env,
    DATABASE_URL: `${PG_SERVER}/${database}`,
    REDIS_URL,
    OFFBOARD_QUEUE_PREFIX: `offboard-browser-${suffix}`,
    OFFBOARD_BIND: `127.0.0.1:${port}`,
    OFFBOARD_LOG_FORMAT: 'text',
    // The dashboard's prefilled development token: on for this test's server alone.
    OFFBOARD_DEV_TOKEN: '1',
  };
  delete env.OFFBOARD_API_TOKENS;

  // Everything started here is stopped and removed, whatever happens.
  const cleanups = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup.run();
      } catch (e) {
        console.error(`cleanup (${cleanup.what}) failed: ${e.message}`);
      }
    }
  });
  cleanups.push({
    what: `drop database ${database}`,
    run: () => run('psql', [`${PG_SERVER}/postgres`, '-qAt', '-v', 'ON_ERROR_STOP=1', '-c',
      `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`]),
  });
  cleanups.push({
    what: 'remove Redis keys',
    run: async () => {
      const { stdout } = await run('redis-cli', ['-u', REDIS_URL, '--scan', '--pattern', `${env.OFFBOARD_QUEUE_PREFIX}:*`]);
      const keys = stdout.split('\n').filter(Boolean);
      for (let i = 0; i < keys.length; i += 500) {
        await run('redis-cli', ['-u', REDIS_URL, 'DEL', ...keys.slice(i, i + 500)]);
      }
    },
  });

  log('building offboard');
  const bin = await buildOffboard();

  const vendor = await startVendor();
  cleanups.push({ what: 'stop the app vendor', run: () => vendor.close() });

  log(`seeding a company in database ${database}, its apps' vendor at ${vendor.url}`);
  const { stdout: seeded } = await run(bin, ['seed', '--users', '12', '--vendor-base-url', vendor.url], { env });
  const company = JSON.parse(seeded);
  const regulars = company.users.filter((u) => !u.is_admin).map((u) => u.id);
  assert.ok(regulars.length >= 6, 'the seed has at least six regular users');
  const actor = company.admin_ids[0];
  const [failingUser, succeedingUser, heir, ...others] = regulars;
  const bulkUsers = others.slice(0, 3);

  log(`starting offboard serve on ${base} (the first four stop_syncs attempts fail permanently)`);
  const serverLog = createWriteStream(path.join(OUT, 'server.log'));
  const server = spawn(bin, ['serve'], {
    env: {
      ...env,
      OFFBOARD_FAULTS: 'stop_syncs=permanent*4',
      // The vendor is on loopback.
      OFFBOARD_OUTBOUND_ALLOW_PRIVATE: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stdout.pipe(serverLog);
  server.stderr.pipe(serverLog);
  let serverExit = null;
  server.on('exit', (code, signal) => { serverExit = { code, signal }; });
  const killServer = () => { if (!serverExit) server.kill('SIGKILL'); };
  process.on('exit', killServer);
  cleanups.push({
    what: 'stop the server',
    run: async () => {
      if (serverExit) return;
      server.kill('SIGTERM');
      await waitFor('the server to stop', () => serverExit, { timeout: 25_000 })
        .catch(() => killServer());
    },
  });
  await waitFor('the API to answer /healthz', async () => {
    assert.equal(serverExit, null, `offboard serve exited early; see ${path.join(OUT, 'server.log')}`);
    return (await fetch(`${base}/healthz`)).ok;
  });

  async function enqueue(user) {
    const response = await fetch(`${base}/v1/offboardings`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({
        company_id: company.company_id,
        user_id: user,
        actor_user_id: actor,
        action: 'deactivate',
        transfer: { default: { mode: 'single', targets: [{ user_id: heir }] } },
      }),
    });
    const body = await response.json();
    assert.equal(response.status, 202, JSON.stringify(body));
    return body.id;
  }

  log(`launching ${CHROMIUM}`);
  const profile = await mkdtemp(path.join(os.tmpdir(), 'offboard-chromium-'));
  cleanups.push({ what: 'remove the browser profile', run: () => rm(profile, { recursive: true, force: true }) });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 1000 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  cleanups.push({ what: 'close the browser', run: () => context.close() });
  const page = context.pages()[0] ?? await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // The browser logs every refused request (the wrong token below) as a console error.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text());
  });

  try {
    await page.goto(`${base}/`);
    assert.equal(await page.inputValue('#token'), TOKEN, 'the token field is prefilled with the dev token');
    await page.waitForSelector('#live[data-state="ok"]', { timeout: WAIT_MS });

    // An API error is shown on the page, and goes away once the token is right.
    await page.fill('#token', 'not-a-token-the-api-knows');
    await page.click('#token-form button[type="submit"]');
    const error = await page.waitForSelector('#error[data-code="unauthorized"]', { state: 'visible', timeout: WAIT_MS });
    log(`wrong token shown as: ${(await error.textContent()).trim()}`);
    await page.fill('#token', TOKEN);
    await page.click('#token-form button[type="submit"]');
    await page.waitForSelector('#error', { state: 'hidden', timeout: WAIT_MS });

    // The first four runs take the injected faults: stop_syncs dies and each run fails.
    const failing = await enqueue(failingUser);
    log(`run ${failing} enqueued (user ${failingUser}); it will fail`);
    await page.waitForSelector(`#runs tr[data-run-id="${failing}"][data-status="failed"]`, { timeout: WAIT_MS });
    log('the runs list shows it failed');
    const bulkRuns = [];
    for (const user of bulkUsers) {
      const id = await enqueue(user);
      bulkRuns.push(id);
      await page.waitForSelector(`#runs tr[data-run-id="${id}"][data-status="failed"]`, { timeout: WAIT_MS });
    }
    log(`${bulkRuns.length} more runs failed with a dead stop_syncs`);

    // The second one succeeds; follow it on its page from the list. Its vendor holds the
    // uninstall callback until the page has shown the run waiting on it: however fast the
    // machine, the page shows the run before it finishes, then finishing.
    vendor.hold();
    const succeeding = await enqueue(succeedingUser);
    log(`run ${succeeding} enqueued (user ${succeedingUser}); its vendor holds the uninstall callback`);
    await page.click(`#runs tr[data-run-id="${succeeding}"] a`, { timeout: WAIT_MS });
    await page.waitForSelector('#steps tr[data-step="uninstall_apps"][data-status="running"]', { timeout: WAIT_MS });
    const waiting = await watchRun(page, 'second run', 'running');
    assert.ok(vendor.held > 0, 'the vendor holds the uninstall callback');
    assert.notEqual((await stepStatuses(page)).finish_deactivation, 'succeeded', 'the run has not finished');
    log(`releasing ${vendor.held} held uninstall callback(s)`);
    vendor.release();
    const progress = await watchRun(page, 'second run', 'succeeded', waiting);
    assert.ok(progress.length > 1, `the page showed the run before it finished: ${progress}`);
    const finished = await stepStatuses(page);
    assert.ok(Object.values(finished).every((s) => s === 'succeeded' || s === 'skipped'), JSON.stringify(finished));
    await page.waitForSelector('#receipt', { state: 'visible', timeout: WAIT_MS });
    assert.match(await page.textContent('#receipt'), new RegExp(`"run_id": "${succeeding}"`));
    assert.ok(await page.isHidden('#retry'), 'no Retry on a succeeded run');
    assert.ok(await page.isHidden('#cancel'), 'no Cancel on a succeeded run');
    await page.screenshot({ path: path.join(OUT, 'run-succeeded.png'), fullPage: true });

    // Back to the list, filtered to failed runs, and into the failed one.
    await page.click('text=← all runs');
    await page.selectOption('#filter-status', 'failed');
    await page.click(`#runs tr[data-run-id="${failing}"] a`, { timeout: WAIT_MS });
    await watchRun(page, 'failed run', 'failed');
    const dead = await page.waitForSelector('#steps tr[data-step="stop_syncs"][data-status="dead"]', { timeout: WAIT_MS });
    assert.match(await dead.textContent(), /injected/, 'the dead step shows its last error');
    assert.match(await page.textContent('#run-error'), /stop_syncs is dead/);
    await page.screenshot({ path: path.join(OUT, 'run-failed.png'), fullPage: true });

    log('clicking Retry');
    await page.click('#retry');
    await page.waitForSelector('#action-result:has-text("Retried")', { timeout: WAIT_MS });
    await watchRun(page, 'retried run', 'succeeded');
    await page.waitForSelector('#steps tr[data-step="stop_syncs"][data-status="succeeded"]', { timeout: WAIT_MS });
    await page.waitForSelector('#receipt', { state: 'visible', timeout: WAIT_MS });
    assert.match(await page.textContent('#receipt'), new RegExp(`"run_id": "${failing}"`));
    assert.ok(await page.isHidden('#retry'), 'Retry is gone once nothing is dead');
    assert.ok(await page.isHidden('#error'), 'no API error is shown');
    await page.waitForFunction(() => /^[1-9]\d* \/ min$/.test(document.querySelector('#stat-throughput').textContent),
      null, { timeout: WAIT_MS });
    const history = await page.textContent('#history');
    assert.match(history, /retried/, 'the history shows the retry');

    await page.screenshot({ path: path.join(OUT, 'dashboard.png'), fullPage: true });
    log(`saved ${path.relative(ROOT, path.join(OUT, 'dashboard.png'))}`);

    // Bulk retry by filter: the runs with a dead stop_syncs, confirmed with the count.
    await page.click('text=← all runs');
    await page.fill('#filter-step', 'stop_syncs');
    await page.selectOption('#filter-step-status', 'dead');
    await page.press('#filter-step', 'Enter');
    await waitFor('the list to show the three runs with a dead stop_syncs', async () =>
      (await page.$$('#runs tbody tr')).length === 3 &&
      (await Promise.all(bulkRuns.map((id) => page.$(`#runs tr[data-run-id="${id}"]`)))).every(Boolean));
    const tail = await page.textContent(`#runs tr[data-run-id="${bulkRuns[0]}"] code`);
    assert.equal(tail, `…${bulkRuns[0].replace(/-/g, '').slice(-12)}`, 'the id column shows the tail');
    assert.ok(await page.isHidden('#bulk-confirm'), 'no confirmation is shown before one is asked for');
    await page.click('#bulk-retry-filter');
    const confirmText = await (await page.waitForSelector('#bulk-confirm', { state: 'visible', timeout: WAIT_MS })).textContent();
    assert.match(confirmText, /Retry the dead steps of 3 runs matching .*step=stop_syncs/, confirmText);
    await page.screenshot({ path: path.join(OUT, 'bulk-confirm.png'), fullPage: true });
    log(`confirming: ${confirmText.trim().split('\n')[0]}`);
    await page.click('#bulk-confirm-yes');
    await page.waitForSelector('#bulk-progress[data-status="succeeded"]', { timeout: WAIT_MS });
    log(`bulk operation: ${(await page.textContent('#bulk-progress-text')).trim()}`);
    await waitFor('the bulk-retried runs to succeed', async () => {
      const statuses = await Promise.all(bulkRuns.map(async (id) => {
        const response = await fetch(`${base}/v1/offboardings/${id}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
        return (await response.json()).status;
      }));
      return statuses.every((s) => s === 'succeeded');
    });
    await page.screenshot({ path: path.join(OUT, 'bulk.png'), fullPage: true });
    log('the three bulk-retried runs succeeded');

    // A run's shape: the graph, and a node's details.
    await page.goto(`${base}/#/runs/${bulkRuns[0]}`);
    await page.waitForSelector('#run-graph g.node[data-step="block_login"][data-status="succeeded"]', { timeout: WAIT_MS });
    const nodes = await page.$$eval('#run-graph g.node', (gs) => gs.map((g) => g.dataset.step));
    assert.ok(nodes.includes('finish_deactivation') && nodes.includes('stop_syncs'), nodes.join(','));
    assert.ok((await page.$$('#run-graph path.edge')).length >= nodes.length - 1, 'edges join the steps');
    await page.click('#run-graph g.node[data-step="stop_syncs"]');
    const detail = await page.waitForSelector('#step-detail[data-step="stop_syncs"]', { state: 'visible', timeout: WAIT_MS });
    const detailText = await detail.textContent();
    assert.match(detailText, /Attempts\s*1 of/, detailText);
    assert.match(detailText, /retried/, 'the step shows the bulk retry in its events');
    await page.screenshot({ path: path.join(OUT, 'graph.png'), fullPage: true });
    log('the run graph and the step detail are shown');

    // The charts drew the last minutes' work.
    await page.goto(`${base}/#/`);
    await page.selectOption('#chart-window', '300');
    await page.waitForSelector('#charts[data-state="ok"]', { timeout: WAIT_MS });
    await page.waitForFunction(() => Number(document.querySelector('#chart-finished').dataset.max) > 0 &&
      document.querySelector('#chart-finished path.line') !== null, null, { timeout: WAIT_MS });
    await page.waitForFunction(() => Number(document.querySelector('#chart-failures').dataset.max) > 0, null, { timeout: WAIT_MS });
    await (await page.$('#charts')).screenshot({ path: path.join(OUT, 'charts.png') });
    log(`charts: ${(await page.textContent('#charts-note')).trim()}`);

    // A batch from a CSV file: its view draws one bar over its runs, lists the refused row,
    // and links to its runs in the list (filter batch_id).
    const batchUsers = others.slice(3, 5);
    const csv = ['company_id,user_id,action,actor_user_id',
      ...batchUsers.map((u) => `${company.company_id},${u},deactivate,${actor}`),
      `${company.company_id},not-a-user,deactivate,${actor}`].join('\n');
    const submitted = await fetch(`${base}/v1/offboarding-batches`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'text/csv' },
      body: csv,
    });
    const batch = await submitted.json();
    assert.equal(submitted.status, 202, JSON.stringify(batch));
    assert.deepEqual(batch.refused.map((r) => [r.row, r.code, r.field]), [[3, 'invalid_request', 'user_id']]);
    await page.goto(`${base}/#/batches/${batch.id}`);
    await page.waitForSelector('#batch-detail', { state: 'visible', timeout: WAIT_MS });
    await page.waitForSelector('#batch-refused tbody tr', { timeout: WAIT_MS });
    await waitFor('the batch view to show both runs ended', async () =>
      /^2 of 2 runs ended/.test((await page.textContent('#batch-progress')).trim()));
    assert.ok(await page.isHidden('#batch-cancel'), 'no Cancel once every run ended');
    await page.screenshot({ path: path.join(OUT, 'batch.png'), fullPage: true });
    log(`batch view: ${(await page.textContent('#batch-progress')).trim()}`);
    await page.click('#batch-runs-link');
    await waitFor('the list to show the batch\'s two runs', async () =>
      (await page.$$('#runs tbody tr')).length === 2);
    assert.equal(await page.inputValue('#filter-batch-id'), batch.id);

    // The list, unfiltered: both runs succeeded.
    await page.goto(`${base}/#/runs/${failing}`);
    await page.waitForSelector('#run-view[data-status="succeeded"]', { timeout: WAIT_MS });
    await page.click('text=← all runs');
    await page.selectOption('#filter-status', '');
    await page.waitForSelector(`#runs tr[data-run-id="${failing}"][data-status="succeeded"]`, { timeout: WAIT_MS });
    await page.waitForSelector(`#runs tr[data-run-id="${succeeding}"][data-status="succeeded"]`, { timeout: WAIT_MS });
    await page.screenshot({ path: path.join(OUT, 'runs.png'), fullPage: true });
    assert.deepEqual(pageErrors, [], 'the page logged no errors');
  } catch (e) {
    await page.screenshot({ path: path.join(OUT, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`failed; see ${path.join(OUT, 'failure.png')} and ${path.join(OUT, 'server.log')}`);
    throw e;
  }
});
