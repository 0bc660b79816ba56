/**
 * The end-to-end story with the real agent, all real parts: two images with Node and the ibu project built
 * by `ibu image build` (2.0 with --previous 1.0), published with `ibu release publish` into a
 * store, served by `ibu serve` on 127.0.0.1, and a QEMU device booted from 1.0 that reaches the
 * server only through restricted user networking. In one QEMU run the device's upgradectl
 * prepares 2.0 through a delta the server builds on demand, applies it (try-once, reboot -f),
 * GRUB boots 2.0 once, `upgradectl confirm` runs the health check and commits. Asserted from the
 * serial log, the grubenv left on the disk, and the server's fleet records.
 * (b): 2.0's trial boot panics the kernel; the device is back on 1.0 by itself and the agent
 * there reports the rollback. (c): 2.0 boots but its health check fails; the agent rolls back.
 * One build, one store and one server for all; each scenario boots its own disk and device id.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { run } from '../../src/util/exec.js';
import {
  e2eUnavailable, kernelKit, buildInitramfs, buildEfi, stageNodeRoot, buildImage, writeGrubCfg, createGrubenv,
  makeDisk, HostFs, boot, missingInOrder, guestNetArgs, repoRoot, timeline,
} from './harness.js';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');
const ADMIN = 'e2e-admin-token';
const SECRET = 'e2e-enrollment-secret';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

function ibu(...args: string[]) {
  return run(process.execPath, [path.join(repoRoot(), 'bin/ibu'), ...args]);
}

describe('agent on a QEMU device: upgrade through a delta, try-once, health check, commit or fall back', { skip: unavailable ?? false }, () => {
  let work = '';
  let server: ChildProcess | null = null;
  let serverLog = '';
  let base = '';
  let port = 0;
  let store = '';
  let keys = '';
  let efi = '';
  let img1 = '';

  async function api(method: string, route: string, body?: unknown, token?: string): Promise<{ status: number; json: unknown }> {
    const res = await fetch(`${base}${route}`, {
      method,
      headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json: unknown = text;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: res.status, json };
  }

  before(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-e2e-agent-'));
    const kit = await kernelKit();
    const initrd = path.join(work, 'initrd.img');
    await buildInitramfs(kit, initrd);
    efi = path.join(work, 'BOOTX64.EFI');
    await buildEfi(efi);

    // releases 1.0 and 2.0: same userland, 2.0 differs in its version file and one new file
    const stage = path.join(work, 'stage');
    img1 = path.join(work, '1.0.img');
    const img2 = path.join(work, '2.0.img');
    await stageNodeRoot(stage, { version: '1.0', kit, initrd });
    await buildImage(stage, img1, '1.0', 256);
    await fsp.writeFile(path.join(stage, 'etc/ibu-e2e/version'), '2.0\n');
    await fsp.writeFile(path.join(stage, 'etc/ibu-e2e/release-notes'), 'release 2.0: a new file\n');
    await ibu('image', 'build', '--root', stage, '--version', '2.0', '--size', '256M', '--previous', img1, '--out', img2);
    await fsp.rm(stage, { recursive: true, force: true });

    keys = path.join(work, 'keys');
    await ibu('keys', 'generate', '--out', keys);
    store = path.join(work, 'store');
    await ibu('release', 'publish', '--image', img1, '--version', '1.0', '--store', store, '--key', path.join(keys, 'signing.key'), '--channel', 'stable');
    await ibu('release', 'publish', '--image', img2, '--version', '2.0', '--store', store, '--key', path.join(keys, 'signing.key'), '--channel', 'stable');

    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    serverLog = path.join(work, 'server.log');
    const logFd = await fsp.open(serverLog, 'w');
    server = spawn(process.execPath, [path.join(repoRoot(), 'bin/ibu'), 'serve', '--data', store, '--listen', `127.0.0.1:${port}`, '--admin-token', ADMIN, '--precompute', '0'], {
      env: { ...process.env, IBU_ENROLLMENT_SECRET: SECRET },
      stdio: ['ignore', logFd.fd, logFd.fd],
    });
    await logFd.close();
    for (let i = 0; ; i++) {
      const ok = await fetch(`${base}/v1/channels/stable/releases`).then((r) => r.ok, () => false);
      if (ok) break;
      if (i > 150 || server.exitCode !== null) throw new Error('ibu serve did not come up:\n' + (await fsp.readFile(serverLog, 'utf8')).slice(-2000));
      await new Promise((r) => setTimeout(r, 200));
    }
  });

  after(async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((r) => server!.once('close', r));
    }
    if (work && process.env.IBU_E2E_KEEP !== '1') await fsp.rm(work, { recursive: true, force: true });
    else if (work) console.log(`e2e work dir kept: ${work}`);
  });

  /**
   * A device with 1.0 installed and committed, enrolled as `device`; `runSh` is the script its
   * init runs on every boot (test/e2e/node-init.sh), with $C = upgradectl and its config.
   */
  async function device(name: string, runSh: string, health: unknown[]): Promise<{ disk: string; host: HostFs }> {
    const enrolled = await api('POST', '/v1/devices/enroll', { deviceId: name, enrollmentSecret: SECRET });
    assert.equal(enrolled.status, 200, `enroll: ${JSON.stringify(enrolled.json)}`);
    const token = (enrolled.json as { token: string }).token;
    const hostTree = path.join(work, `host-${name}`);
    await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
    await fsp.copyFile(img1, path.join(hostTree, 'images/1.0.img'));
    await fsp.mkdir(path.join(hostTree, 'ibu-e2e/keyring'), { recursive: true });
    await fsp.copyFile(path.join(keys, 'signing.pub'), path.join(hostTree, 'ibu-e2e/keyring/signing.pub'));
    await fsp.writeFile(path.join(hostTree, 'ibu-e2e/agent.json'), JSON.stringify({
      server: { url: 'http://10.0.2.100', deviceId: name, token },
      channel: 'stable',
      keyring: '/host/ibu-e2e/keyring',
      checkpoint: 'fsfreeze',
      reboot: { command: ['reboot', '-f'], forceCommand: ['reboot', '-f'], forceAfterSeconds: 0 },
      download: { deltaWaitSeconds: 600, maxRetryAfterSeconds: 5 },
      health: { deadlineSeconds: 30, checks: health },
      pollSeconds: 2,
    }, null, 2));
    await fsp.writeFile(path.join(hostTree, 'ibu-e2e/run.sh'), 'C="node /opt/ibu/bin/upgradectl --config /host/ibu-e2e/agent.json"\n' + runSh);
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1.0');
    const disk = path.join(work, `disk-${name}.img`);
    const offset = await makeDisk({ efi, hostTree, hostMiB: 1024, out: disk });
    await fsp.rm(hostTree, { recursive: true, force: true });
    return { disk, host: new HostFs(disk, offset, work) };
  }

  async function runDevice(name: string, disk: string, patterns: RegExp[]): Promise<string> {
    const res = await boot({ disk, logFile: path.join(work, `${name}.log`), memMiB: 1024, extra: guestNetArgs(port), timeoutMs: 1_500_000 });
    console.log(`${name}: ${timeline(res.log)}`);
    const tail = res.log.split('\n').slice(-80).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `${name}: the device did not finish\n${tail}`);
    const miss = missingInOrder(res.log, patterns);
    assert.equal(miss, null, `${name}: ${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    return res.log;
  }

  async function deviceRecord(name: string) {
    const dev = await api('GET', `/v1/admin/fleet/devices/${name}`, undefined, ADMIN);
    assert.equal(dev.status, 200);
    const d = dev.json as { version: string; committedVersion: string; state: string; trial: boolean; lastErrorCode: string | null };
    return { version: d.version, committedVersion: d.committedVersion, state: d.state, trial: d.trial, lastErrorCode: d.lastErrorCode };
  }

  /** The device's events as the server stored them (the fleet's own SQLite file: the admin API lists none). */
  function events(name: string): unknown[] {
    const db = new Database(path.join(store, 'fleet.sqlite'), { readonly: true });
    try {
      return db.prepare('SELECT type, from_version AS "from", to_version AS "to" FROM events WHERE device_id = ? ORDER BY id').all(name);
    } finally {
      db.close();
    }
  }

  // prepare + apply on the first boot of 1.0 only (a marker on the host fs); confirm on every
  // later boot, as upgradectl-confirm.service does; then the state for the log
  const STANDARD_RUN = `
if [ "$IBU_E2E_VERSION" = 1.0 ] && [ ! -e /host/ibu-e2e/applied ]; then
  $C prepare; echo "IBU-E2E prepare exit $?"
  touch /host/ibu-e2e/applied; sync
  $C apply --now; echo "IBU-E2E apply exit $? (it should have rebooted)"
  sleep 600
fi
PANIC_HOOK
$C confirm; echo "IBU-E2E confirm exit $?"
$C status --json | sed 's/^/IBU-E2E status /'
`;
  const HEALTHY = [{ name: 'userland', command: ['test', '-f', '/etc/ibu-e2e/version'], timeoutSeconds: 10 }];

  test('(a) 1.0 -> 2.0 through a delta: trial boot, health check, commit; the server records success', async () => {
    const { disk, host } = await device('vm-a', STANDARD_RUN.replace('PANIC_HOOK', ''), HEALTHY);
    await runDevice('vm-a', disk, [
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /IBU-E2E prepare exit 0/,
      /upgradectl: rebooting/,
      /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
      /IBU-E2E RUNNING version=2\.0 trial=1/,
      /IBU-E2E confirm exit 0/,
      /IBU-E2E status .*"running":"2\.0","committed":"2\.0"/,
      /IBU-E2E POWEROFF version=2\.0/,
    ]);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['2.0', null], 'committed on the disk');
    assert.ok(await host.readFile('/images/2.0.img'), '2.0 installed');
    assert.deepEqual(await deviceRecord('vm-a'), { version: '2.0', committedVersion: '2.0', state: 'committed', trial: false, lastErrorCode: null });
    assert.deepEqual(events('vm-a'), [
      { type: 'apply-started', from: '1.0', to: '2.0' },
      { type: 'upgrade-succeeded', from: '1.0', to: '2.0' },
    ]);
    // the request log (pino JSON lines): the delta was requested and answered 200
    const urls = new Map<string, string>();
    let deltaServed = false;
    for (const line of (await fsp.readFile(serverLog, 'utf8')).split('\n')) {
      let e: { reqId?: string; req?: { url?: string }; res?: { statusCode?: number } };
      try {
        e = JSON.parse(line);
      } catch {
        continue;
      }
      if (e.reqId && e.req?.url) urls.set(e.reqId, e.req.url);
      if (e.reqId && e.res?.statusCode === 200 && urls.get(e.reqId) === '/v1/deltas/1.0/2.0') deltaServed = true;
    }
    assert.ok(deltaServed, 'the server answered GET /v1/deltas/1.0/2.0 with 200');
  });

  test('(b) 2.0 panics the kernel on its trial boot: back on 1.0 by itself; the server records a rollback', async () => {
    // the crash comes before any health check could run, as with a broken kernel or init
    const panic = 'if [ "$IBU_E2E_TRIAL" = 1 ]; then echo "IBU-E2E crashing the trial boot"; echo c > /proc/sysrq-trigger; sleep 60; fi';
    const { disk, host } = await device('vm-b', STANDARD_RUN.replace('PANIC_HOOK', panic), HEALTHY);
    const log = await runDevice('vm-b', disk, [
      /IBU-E2E prepare exit 0/,
      /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
      /IBU-E2E crashing the trial boot/,
      /Kernel panic - not syncing/,
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /IBU-E2E confirm exit 10/, // 10: rolled back (docs/agent.md)
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
      /IBU-E2E POWEROFF version=1\.0/,
    ]);
    assert.doesNotMatch(log, /IBU-E2E RUNNING version=2\.0 trial=0/);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['1.0', null]);
    const rec = await deviceRecord('vm-b');
    assert.equal(rec.version, '1.0');
    assert.equal(rec.committedVersion, '1.0');
    assert.deepEqual(events('vm-b').map((e) => (e as { type: string }).type), ['apply-started', 'rolled-back']);
  });

  test('(c) 2.0 boots but fails its health check: the agent rolls back to 1.0', async () => {
    // healthy only on 1.0: the check reads the image's own version file
    const health = [{ name: 'marker', command: ['sh', '-c', 'test "$(cat /etc/ibu-e2e/version)" = 1.0'], timeoutSeconds: 5 }];
    const { disk, host } = await device('vm-c', STANDARD_RUN.replace('PANIC_HOOK', ''), health);
    await runDevice('vm-c', disk, [
      /IBU-E2E prepare exit 0/,
      /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
      /IBU-E2E RUNNING version=2\.0 trial=1/,
      /upgradectl: rebooting/,
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
      /IBU-E2E POWEROFF version=1\.0/,
    ]);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['1.0', null]);
    const rec = await deviceRecord('vm-c');
    assert.equal(rec.version, '1.0');
    assert.deepEqual(events('vm-c'), [
      { type: 'apply-started', from: '1.0', to: '2.0' },
      { type: 'upgrade-failed', from: '2.0', to: '1.0' },
    ]);
  });
});
