/**
 * Upgrade scenarios of the agent (the real CLI in a child process) against the real `ibu serve`
 * (test/agent/server.ts): the device is enrolled, the server offers 2.0 through a rollout, and
 * what the server accepted (check-ins, events) is what its hooks recorded. GRUB and the reboot
 * are imitated by device.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { cli, makeDevice, type Device } from './device.js';
import { startServer, type TestServer } from './server.js';

async function device(): Promise<Device> {
  const dev = await makeDevice({ running: '1.0', releases: [{ version: '1.0' }, { version: '2.0' }] });
  const r = await cli(dev, ['init', '--default', '1.0']);
  assert.equal(r.code, 0, r.stderr);
  return dev;
}

/** The server with 2.0 offered to the enrolled device `dev-1` when `offer` is set; the device's config points at it. */
async function serverFor(dev: Device, o: { offer: boolean; config?: Record<string, unknown> }): Promise<TestServer> {
  const server = await startServer(dev.storeDir);
  const token = await server.enroll('dev-1');
  if (o.offer) await server.offer('2.0', ['1.0', '2.0']);
  await dev.writeConfig({ server: { url: server.url, deviceId: 'dev-1', token }, ...o.config });
  return server;
}

async function journal(dev: Device): Promise<Record<string, unknown>> {
  return JSON.parse(await fsp.readFile(path.join(dev.images, '.ibu', 'state.json'), 'utf8'));
}

test('server-driven upgrade: check-in names the target, events reach the server', async () => {
  const dev = await device();
  // Chunks, not a delta: this story is about the chunk routes (the delta route has its own test).
  const server = await serverFor(dev, { offer: true, config: { download: { useDelta: false } } });
  try {
    let r = await cli(dev, ['check', '--json']);
    assert.equal((r.json!.target as { version: string }).version, '2.0');
    r = await cli(dev, ['prepare', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.outcome, 'prepared');
    assert.ok(server.chunkRequests > 0, 'chunks came over HTTP from the server routes');
    // The clean reboot "hangs" (the fake returns and nothing stops us): the forced one follows.
    await dev.writeConfig({ reboot: { ...(dev.config.reboot as object), forceAfterSeconds: 0.2 } });
    r = await cli(dev, ['apply', '--json']);
    assert.equal(r.json!.outcome, 'rebooting', r.stderr);
    assert.deepEqual((await fsp.readFile(dev.rebootLog, 'utf8')).trim().split('\n'), ['reboot', 'force']);
    await dev.boot();
    r = await cli(dev, ['confirm', '--json']);
    assert.equal(r.json!.outcome, 'committed');
    assert.deepEqual(
      server.events.map((e) => `${e.type} ${e.fromVersion}->${e.toVersion}`),
      ['apply-started 1.0->2.0', 'upgrade-succeeded 1.0->2.0'],
    );
    // After the commit the agent checks in at once, so the server sees the new state.
    const ci = server.checkins.at(-1) as { version: string; trial: boolean; state: string; committedVersion: string };
    assert.deepEqual([ci.version, ci.trial, ci.state, ci.committedVersion], ['2.0', false, 'committed', '2.0']);
    assert.equal((server.checkins[0] as { freeBytes: number }).freeBytes > 0, true);
  } finally {
    await server.close();
    await dev.cleanup();
  }
});

test('a failing health check on the trial boot: default stays, the device reboots, the server hears it', async () => {
  const dev = await device();
  const server = await serverFor(dev, {
    offer: true,
    config: { download: { useDelta: false }, health: { deadlineSeconds: 1, checks: [{ name: 'app', command: ['sh', '-c', 'exit 3'], timeoutSeconds: 1 }] } },
  });
  try {
    assert.equal((await cli(dev, ['prepare', '--version', '2.0'])).code, 0);
    assert.equal((await cli(dev, ['apply', '--now'])).code, 0);
    assert.equal(await dev.boot(), '2.0');
    const r = await cli(dev, ['confirm', '--json']);
    assert.equal(r.code, 10, r.stderr);
    assert.equal(r.json!.outcome, 'rolled-back');
    assert.match(String(r.json!.message), /app: exit 3/);
    assert.equal((await dev.env()).default_image, '1.0');
    assert.deepEqual((await fsp.readFile(dev.rebootLog, 'utf8')).trim().split('\n'), ['reboot', 'reboot']);
    assert.equal(await dev.boot(), '1.0');
    const again = await cli(dev, ['confirm', '--json']);
    assert.equal(again.code, 0);
    assert.equal((await journal(dev)).state, 'rolled-back');
    assert.deepEqual(
      server.events.map((e) => e.type),
      ['apply-started', 'upgrade-failed'],
    );
    assert.equal(server.events[1]!.error?.code, 'HEALTH_CHECK_FAILED');
    // The server still offers 2.0: the device does not loop through the failing trial by itself.
    const p = await cli(dev, ['prepare', '--json']);
    assert.equal(p.json!.outcome, 'up-to-date', p.stderr);
    assert.match(String(p.json!.message), /failed its trial boot on this device/);
  } finally {
    await server.close();
    await dev.cleanup();
  }
});

test('the new kernel never reaches confirm: GRUB falls back by itself, the agent records and reports it', async () => {
  const dev = await device();
  const server = await serverFor(dev, { offer: false, config: { download: { useDelta: false } } });
  try {
    assert.equal((await cli(dev, ['prepare', '--version', '2.0'])).code, 0);
    assert.equal((await cli(dev, ['apply', '--now'])).code, 0);
    assert.equal(await dev.boot(), '2.0'); // panics before userspace: no confirm runs
    assert.equal(await dev.boot(), '1.0'); // the watchdog resets; try_image was consumed
    const r = await cli(dev, ['confirm', '--json']);
    assert.equal(r.json!.outcome, 'rolled-back', r.stderr);
    assert.equal(server.events.at(-1)!.type, 'rolled-back');
    const s = await cli(dev, ['status', '--json']);
    assert.equal(s.json!.state, 'rolled-back');
    assert.equal((s.json!.lastError as { code: string }).code, 'HEALTH_CHECK_FAILED');
  } finally {
    await server.close();
    await dev.cleanup();
  }
});

test('apply honours the maintenance window and inhibitors; rollback by hand', async () => {
  const dev = await device();
  try {
    assert.equal((await cli(dev, ['prepare', '--version', '2.0'])).code, 0);
    // A window that is closed right now: a one-minute window 12 hours away.
    const now = new Date();
    const h = (now.getUTCHours() + 12) % 24;
    const hh = String(h).padStart(2, '0');
    await dev.writeConfig({ window: { timeZone: 'UTC', rules: [{ days: [0, 1, 2, 3, 4, 5, 6], start: `${hh}:00`, end: `${hh}:01` }] } });
    let r = await cli(dev, ['apply', '--json']);
    assert.equal(r.code, 9);
    assert.equal((r.json!.error as { code: string }).code, 'NOT_IN_WINDOW');
    assert.equal((await dev.env()).try_image, undefined);
    // Inside the window (--now) but a backup holds its lock file.
    const lock = path.join(dev.dir, 'backup.lock');
    await fsp.writeFile(lock, '');
    await dev.writeConfig({ inhibitors: [{ name: 'backup', lockFile: lock }], inhibitorWaitSeconds: 0.2 });
    r = await cli(dev, ['apply', '--now', '--json']);
    assert.equal(r.code, 9);
    assert.equal((r.json!.error as { code: string }).code, 'INHIBITED');
    assert.match((r.json!.error as { message: string }).message, /backup \(lock file/);
    // The backup ends while apply waits.
    await dev.writeConfig({ inhibitorWaitSeconds: 30 });
    setTimeout(() => void fsp.rm(lock), 500);
    r = await cli(dev, ['apply', '--now', '--json']);
    assert.equal(r.json!.outcome, 'rebooting', r.stderr);
    // Changed our mind before the reboot: cancel the trial.
    r = await cli(dev, ['rollback', '--json']);
    assert.equal(r.json!.outcome, 'cancelled');
    assert.equal((await dev.env()).try_image, undefined);
    r = await cli(dev, ['apply', '--now', '--json']);
    assert.equal(r.json!.outcome, 'rebooting');
    await dev.boot();
    assert.equal((await cli(dev, ['confirm'])).code, 0);
    assert.equal((await dev.env()).default_image, '2.0');
    // Rollback by hand from the committed 2.0 to 1.0.
    r = await cli(dev, ['rollback', '--json']);
    assert.equal(r.json!.outcome, 'rebooting', r.stderr);
    assert.equal((await dev.env()).default_image, '1.0');
    assert.equal(await dev.boot(), '1.0');
    r = await cli(dev, ['status', '--json']);
    assert.equal(r.json!.state, 'rolled-back');
    assert.equal(r.json!.trial, false);
  } finally {
    await dev.cleanup();
  }
});

test('tampered manifest or chunk: refused with a verify exit code, nothing installed, boot state untouched', async () => {
  const dev = await device();
  try {
    const mf = path.join(dev.storeDir, 'releases', '2.0', 'manifest.json');
    const good = await fsp.readFile(mf, 'utf8');
    await fsp.writeFile(mf, good.replace('"channel":"stable"', '"channel":"stable" ').replace(/"createdAt":"[^"]+"/, '"createdAt":"2001-01-01T00:00:00.000Z"'));
    let r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
    assert.equal(r.code, 4, r.stderr);
    assert.equal((r.json!.error as { code: string }).code, 'SIGNATURE_INVALID');
    await fsp.writeFile(mf, good);
    // Corrupt every stored chunk the download needs (those the running image cannot seed).
    type M = { chunks: Array<{ id: string; zero?: boolean }> };
    const m = JSON.parse(good) as M;
    const m1 = JSON.parse(await fsp.readFile(path.join(dev.storeDir, 'releases', '1.0', 'manifest.json'), 'utf8')) as M;
    const seeded = new Set(m1.chunks.map((c) => c.id));
    const needed = new Set(m.chunks.filter((c) => !c.zero && !seeded.has(c.id)).map((c) => c.id));
    assert.ok(needed.size > 0);
    for (const id of needed) {
      const cf = path.join(dev.storeDir, 'chunks', id.slice(0, 4), `${id}.zst`);
      const bytes = await fsp.readFile(cf);
      bytes[bytes.length - 5]! ^= 0xff;
      await fsp.writeFile(cf, bytes);
    }
    r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
    assert.equal(r.code, 4, r.stderr);
    assert.match((r.json!.error as { code: string }).code, /^CHUNK_(INVALID|TRUNCATED)$/);
    assert.equal(await fsp.stat(path.join(dev.images, '2.0.img')).catch(() => null), null);
    assert.deepEqual([(await dev.env()).default_image, (await dev.env()).try_image], ['1.0', undefined]);
    const s = await cli(dev, ['status', '--json']);
    assert.match((s.json!.lastError as { code: string }).code, /^CHUNK_/);
  } finally {
    await dev.cleanup();
  }
});

test('delta route: waits on 202 as told by Retry-After while the server builds the delta, then applies it', async () => {
  const dev = await device();
  // The server builds the delta on demand (precompute 0): its first answers are 202 + Retry-After.
  const server = await serverFor(dev, { offer: false, config: { download: { maxRetryAfterSeconds: 0.2 } } });
  try {
    const r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.json!.download as { method: string }).method, 'delta', r.stderr);
    assert.match(r.stderr, /is building \(position 0\); retrying/);
    assert.equal(server.chunkRequests, 0, 'no chunk was needed');
    assert.equal((await journal(dev)).state, 'prepared');
  } finally {
    await server.close();
    await dev.cleanup();
  }
});
