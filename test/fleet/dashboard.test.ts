import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { signed } from '../helpers/enroll.js';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance } from 'fastify';
import { chromium, type BrowserContext } from 'playwright-core';
import { fleetPlugin } from '../../src/server/fleet/plugin.js';
import type { Fleet } from '../../src/fleet/fleet.js';
import '../../src/server/contracts.js';
import { BACKENDS } from './backends.js';

// The dashboard end to end: a real server with a real fleet in it, driven by Debian's Chromium
// in headless mode through playwright-core. The screenshot lands in a temp dir (and in
// docs/img/dashboard.png when that file is missing or IBU_DASHBOARD_DOCS=1).
const CHROMIUM = '/usr/bin/chromium';
const ADMIN = 'dashboard-admin-token';
let dir: string;
let app: FastifyInstance;
let base: string;
let browser: BrowserContext | undefined;
let cleanup: (() => Promise<void>) | undefined;

function repoRoot(): string {
  let d = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(d, 'package.json'))) d = path.dirname(d);
  return d;
}

/** A small fleet: a completed rollout of 2.0, a paused one of 2.1 with rollbacks and a silent box. */
async function populate(svc: Fleet): Promise<void> {
  for (const v of ['1.0', '2.0', '2.1']) await svc.registerRelease({ version: v });
  await svc.setGroup({
    name: 'berlin',
    window: { timeZone: 'Europe/Berlin', rules: [{ days: [1, 2, 3, 4, 5], start: '01:00', end: '04:00' }] },
    maxConcurrentReboots: 5,
  });
  const tokens = new Map<string, string>();
  for (let i = 0; i < 240; i++) {
    const id = `box-${String(i).padStart(3, '0')}`;
    tokens.set(id, (await svc.enroll(signed({ deviceId: id, enrollmentSecret: 'e', group: i % 4 === 0 ? 'berlin' : 'default' }))).token);
    await svc.checkin(id, tokens.get(id), { version: i < 200 ? '2.0' : '1.0', state: 'committed', trial: false });
  }
  const r1 = await svc.createRollout({ version: '2.0', spec: { waves: [100], successRatio: 0.8 } });
  await svc.evaluate();
  assert.equal(svc.rollout(r1.id).state, 'completed');
  const r2 = await svc.createRollout({ version: '2.1', spec: { waves: [10, 50, 100], maxFailureRatio: 0.1, minSample: 5 } });
  let n = 0;
  for (const [id, token] of tokens) {
    const res = await svc.checkin(id, token, { version: (await svc.device(id)).version!, state: 'committed', trial: false });
    if (res.target?.version !== '2.1') continue;
    n++;
    await svc.event(id, token, { type: 'apply-started', fromVersion: '2.0', toVersion: '2.1' });
    if (n <= 3) {
      await svc.event(id, token, {
        type: 'rolled-back',
        fromVersion: '2.0',
        toVersion: '2.1',
        error: {
          code: 'HEALTH_CHECK_FAILED',
          message: n === 1 ? '<img src=x onerror="document.title=\'pwned\'"> postgres did not start' : 'kernel panic on boot',
        },
      });
    } else if (n <= 12) {
      await svc.checkin(id, token, { version: '2.1', state: 'committed', trial: false });
    }
  }
  await svc.evaluate();
  assert.equal(svc.rollout(r2.id).state, 'paused', 'the bad release paused itself');
}

// The same check on each backend (SQLite and PostgreSQL); each run gets a fresh database.
for (const backend of BACKENDS) describe(`dashboard on ${backend.name}`, { skip: backend.skip }, () => suite(backend));

function suite(backend: (typeof BACKENDS)[number]): void {
  before(async () => {
    const made = await backend.make();
    cleanup = made.cleanup;
    dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-dash-'));
    app = Fastify();
    await app.register(fleetPlugin, { dataDir: dir, adminToken: ADMIN, enrollmentSecret: 'e', storeSyncMs: 0, repository: made.repo });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const a = app.server.address();
    base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
    await populate(app.fleetService!);
  });
  after(async () => {
    await browser?.close().catch(() => {});
    await app?.close();
    await cleanup?.();
    rmSync(dir, { recursive: true, force: true });
  });

  test(
    'dashboard in headless Chromium: histogram, waves, problem devices, pause/resume',
    { skip: existsSync(CHROMIUM) || process.env.CI || process.env.IBU_TEST_PG ? false : `${CHROMIUM} is missing (apt-get install chromium)` },
    async () => {
      const profile = mkdtempSync(path.join(os.tmpdir(), 'ibu-chromium-profile-'));
      try {
        // A fresh profile dir (playwright passes it to Chromium as --user-data-dir).
        browser = await chromium.launchPersistentContext(profile, {
          executablePath: CHROMIUM,
          headless: true,
          args: [
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-quic',
            '--no-first-run',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
          ],
          viewport: { width: 1280, height: 1000 },
        });
        const page = await browser.newPage();
        const errors: string[] = [];
        page.on('pageerror', (e) => errors.push(e.message));

        // Without the token: the API refuses and the page says how to sign in.
        await page.goto(`${base}/dashboard`);
        await page.waitForSelector('#status.err');
        assert.match((await page.textContent('#status')) ?? '', /not signed in/);
        // A token in the URL is refused, even the right one, and signs nobody in (issue #15).
        const inUrl = await page.goto(`${base}/dashboard?token=${ADMIN}`);
        assert.equal(inUrl?.status(), 400);
        assert.match((await inUrl?.text()) ?? '', /sign-in/);

        // The sign-in form POSTs the token; afterwards a cookie, and the URL is clean.
        await page.goto(`${base}/dashboard/sign-in`);
        await page.fill('input[name=token]', 'wrong');
        await Promise.all([page.waitForNavigation(), page.click('button[type=submit], input[type=submit]')]);
        assert.doesNotMatch(page.url(), /\/dashboard$/, 'a wrong token does not get in');
        await page.goto(`${base}/dashboard/sign-in`);
        await page.fill('input[name=token]', ADMIN);
        await Promise.all([page.waitForNavigation(), page.click('button[type=submit], input[type=submit]')]);
        await page.waitForSelector('body[data-loaded="true"]');
        assert.equal(new URL(page.url()).search, '');

        const versions = await page.$$eval('#versions tbody tr', (rows) =>
          rows.map((r) => [...r.querySelectorAll('td')].slice(0, 2).map((td) => td.textContent)),
        );
        assert.deepEqual(versions.find((v) => v[0] === '2.0')?.[1] !== undefined, true);
        const total = versions.reduce((s, v) => s + Number(v[1]), 0);
        assert.equal(total, 240);

        const rollouts = await page.$$eval('.rollout', (els) =>
          els.map((e) => ({ text: e.textContent ?? '', waves: e.querySelectorAll('table.waves tr').length - 1 })),
        );
        assert.equal(rollouts.length, 2);
        assert.match(rollouts[0]!.text, /2\.1.*paused.*failure ratio/s);
        assert.equal(rollouts[0]!.waves, 3);
        assert.match(rollouts[1]!.text, /2\.0.*completed/s);

        const problems = await page.$$eval('#problems tbody tr', (rows) => rows.map((r) => r.textContent ?? ''));
        assert.equal(problems.filter((t) => /rolled-back/.test(t)).length, 3);
        assert.ok(problems.some((t) => t.includes('kernel panic on boot')));
        assert.ok(
          problems.some((t) => t.includes('<img src=x')),
          'untrusted text shown as text',
        );
        assert.notEqual(await page.title(), 'pwned');
        assert.equal(await page.$$eval('#problems img', (imgs) => imgs.length), 0);

        const shotDir = mkdtempSync(path.join(os.tmpdir(), 'ibu-dashboard-shot-'));
        const shot = path.join(shotDir, 'dashboard.png');
        await page.screenshot({ path: shot, fullPage: true });
        assert.ok(statSync(shot).size > 10_000);
        const docs = path.join(repoRoot(), 'docs', 'img', 'dashboard.png');
        if (process.env.IBU_DASHBOARD_DOCS === '1' || !existsSync(docs)) {
          mkdirSync(path.dirname(docs), { recursive: true });
          copyFileSync(shot, docs);
        }

        // Operator actions from the page: resume the paused rollout.
        await page.click('.rollout[data-id="2"] button:has-text("resume")');
        await page.waitForFunction(() => /running/.test(document.querySelector('.rollout[data-id="2"]')?.textContent ?? ''));
        assert.equal(app.fleetService!.rollout(2).state, 'running');
        assert.deepEqual(errors, []);
        rmSync(shotDir, { recursive: true, force: true });
      } finally {
        await browser?.close().catch(() => {});
        browser = undefined;
        rmSync(profile, { recursive: true, force: true });
      }
    },
  );
}
