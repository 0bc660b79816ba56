/**
 * `npm run demo:model`: the whole upgrade story on the busybox model device, narrated for a human.
 * Builds images 1.0 and 2.0 with `ibu image build`, signs and publishes them with
 * `ibu release publish`, starts `ibu serve` on 127.0.0.1 (SQLite fleet, local store), boots a
 * QEMU device (OVMF, GRUB loopback, TCG) from 1.0 that reaches the server only through
 * restricted user networking, and lets its real upgradectl check in, fetch the delta the server
 * builds on demand, apply it, reboot into a one-shot trial of 2.0, pass its health check and
 * commit. The same parts and checks as scenario (a) of test/e2e/agent-upgrade.test.ts; the
 * harness there is reused as is. Needs root and scripts/install-deps.sh.
 *
 *   npm run demo:model [-- --keep]      (IBU_DEMO_KEEP=1 also keeps the work dir)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import Database from 'better-sqlite3';
import {
  e2eUnavailable,
  kernelKit,
  buildInitramfs,
  buildEfi,
  stageNodeRoot,
  writeGrubCfg,
  createGrubenv,
  makeDisk,
  HostFs,
  boot,
  missingInOrder,
  guestNetArgs,
  repoRoot,
  timeline,
  ibu,
  freePort,
} from '../test/e2e/harness.js';
import { COMMITTED_RECORD, HEALTHY_CHECKS, UPGRADE_EVENTS, UPGRADE_STORY } from '../test/e2e/upgrade-story.js';
import { formatBytes } from '../src/util/bytes.js';
import { DemoError, followServerLog, publishReleases, say, step, t0, runDemo } from './narration.js';
import { newDeviceKey, signEnrollment } from '../src/fleet/device-proof.js';

const keep = process.argv.includes('--keep') || process.env.IBU_DEMO_KEEP === '1';
const DEVICE = 'demo-device-1';

async function imageSizes(img: string): Promise<string> {
  const st = await fsp.stat(img);
  return `${formatBytes(st.size)} file, ${formatBytes(st.blocks * 512)} allocated (sparse)`;
}

/**
 * The guest serial line worth showing, trimmed, or null: GRUB's and the initramfs' ibu lines,
 * upgradectl, the image init's IBU-E2E markers, kernel panics. Firmware and kernel chatter, fsck
 * details and GRUB's screen-drawing escapes stay in the log file.
 */
function interesting(raw: string): string | null {
  // the harness decodes serial bytes as latin1; the agent writes UTF-8 (arrows)
  const line = Buffer.from(raw, 'latin1').toString('utf8').trimEnd();
  const grub = line.indexOf('ibu: ');
  if (grub >= 0 && !line.startsWith('[ibu-initramfs')) return line.slice(grub);
  if (/^\[ibu-initramfs [^\]]*\] (starting|mounted|switch_root)/.test(line)) return line;
  const status = /^IBU-E2E status (\{.*\})$/.exec(line);
  if (status) {
    try {
      const j = JSON.parse(status[1]) as { running: string; committed: string; state: string; trial: boolean; target?: { method?: string } };
      return `IBU-E2E status running=${j.running} committed=${j.committed} state=${j.state} trial=${j.trial} method=${j.target?.method ?? '-'}`;
    } catch {
      return line.slice(0, 200);
    }
  }
  if (/^(upgradectl|IBU-E2E |upgrade available|up to date|\S+ is prepared)/.test(line) || /Kernel panic|FATAL/.test(line)) return line.slice(0, 240);
  return null;
}

/** Step headlines derived from the serial lines as they come. */
const HEADLINES: [RegExp, string, 'before' | 'after'][] = [
  [/ibu: default_image=1\.0 try= boot=1\.0 trial=0/, 'GRUB boots the committed image 1.0 (loopback from /images/1.0.img)', 'before'],
  [/IBU-E2E RUNNING version=1\.0 trial=0/, 'device is up on 1.0; upgradectl checks in with the server', 'before'],
  [/IBU-E2E check exit 0/, 'upgradectl prepare: fetch the 1.0 -> 2.0 delta, verify, install /images/2.0.img', 'after'],
  [/IBU-E2E prepare exit 0/, 'upgradectl apply: set try_image=2.0 (one shot) and reboot', 'after'],
  [/ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/, 'GRUB consumed try_image and boots 2.0 once, as a trial', 'before'],
  [/IBU-E2E RUNNING version=2\.0 trial=1/, 'device is up on 2.0 (trial); upgradectl confirm runs the health check', 'before'],
  [/IBU-E2E confirm exit 0/, 'health check passed: 2.0 committed (default_image=2.0)', 'after'],
  [/IBU-E2E POWEROFF/, 'device powers off', 'before'],
];

// check-in and prepare+apply on the first boot of 1.0 only (a marker on the host fs); confirm on
// every later boot, as upgradectl-confirm.service does on a real device
const RUN_SH = `C="node /opt/ibu/bin/upgradectl --config /host/ibu-e2e/agent.json"
if [ "$IBU_E2E_VERSION" = 1.0 ] && [ ! -e /host/ibu-e2e/applied ]; then
  $C check; echo "IBU-E2E check exit $?"
  $C prepare; echo "IBU-E2E prepare exit $?"
  touch /host/ibu-e2e/applied; sync
  $C apply --now; echo "IBU-E2E apply exit $? (it should have rebooted)"
  sleep 600
fi
$C confirm; echo "IBU-E2E confirm exit $?"
$C status --json | sed 's/^/IBU-E2E status /'
`;

async function main(): Promise<void> {
  const unavailable = e2eUnavailable();
  if (unavailable) throw new DemoError(`the demo cannot run here: ${unavailable}.`);
  if (!existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js'))) throw new DemoError('dist/ is not built: run npm run build (npm run demo:model does it).');

  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-demo-'));
  let server: ChildProcess | null = null;
  const cleanup = async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((r) => server!.once('close', r));
    }
    if (keep) say(`work dir kept: ${work} (serial log device.log, server log server.log, disk disk.img)`);
    else await fsp.rm(work, { recursive: true, force: true });
  };
  process.once('SIGINT', () => {
    void cleanup().finally(() => process.exit(130));
  });
  say(`ibu demo: work dir ${work}${keep ? ' (kept)' : ' (removed at the end; --keep to keep it)'}`);
  try {
    step('boot kit: Debian kernel + static e2fsck (scripts/e2e-setup.sh, cached), busybox initramfs, GRUB EFI');
    const kit = await kernelKit();
    const initrd = path.join(work, 'initrd.img');
    await buildInitramfs(kit, initrd);
    const efi = path.join(work, 'BOOTX64.EFI');
    await buildEfi(efi);
    say(`kernel ${kit.kver}; initramfs ${formatBytes((await fsp.stat(initrd)).size)}; GRUB EFI ${formatBytes((await fsp.stat(efi)).size)}`);

    step('building image 1.0 (ibu image build: Node + the ibu project + kernel, ext4, deterministic)');
    const stage = path.join(work, 'stage');
    const img1 = path.join(work, '1.0.img');
    const img2 = path.join(work, '2.0.img');
    await stageNodeRoot(stage, { version: '1.0', kit, initrd });
    await ibu('image', 'build', '--root', stage, '--version', '1.0', '--size', '256M', '--out', img1);
    say(`1.0.img: ${await imageSizes(img1)}`);

    step('building image 2.0 (--previous 1.0: unchanged files keep their blocks)');
    await fsp.writeFile(path.join(stage, 'etc/ibu-e2e/version'), '2.0\n');
    await fsp.writeFile(path.join(stage, 'etc/ibu-e2e/release-notes'), 'release 2.0: a new file\n');
    await ibu('image', 'build', '--root', stage, '--version', '2.0', '--size', '256M', '--previous', img1, '--out', img2);
    await fsp.rm(stage, { recursive: true, force: true });
    say(`2.0.img: ${await imageSizes(img2)}`);
    const diff = JSON.parse((await ibu('image', 'diff', img1, img2, '--json')).stdout) as { added: string[]; removed: string[]; changed: string[] };
    say(
      `ibu image diff: ${diff.added.length} added, ${diff.removed.length} removed, ${diff.changed.length} changed (${[...diff.added, ...diff.changed].slice(0, 4).join(', ')})`,
    );

    const { keys, store } = await publishReleases(work, [
      ['1.0', img1],
      ['2.0', img2],
    ]);

    step('starting the server (ibu serve: releases, chunks, deltas on demand, fleet on SQLite)');
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const admin = randomBytes(16).toString('hex');
    const secret = randomBytes(16).toString('hex');
    const serverLog = path.join(work, 'server.log');
    const logFd = await fsp.open(serverLog, 'w');
    server = spawn(
      process.execPath,
      [path.join(repoRoot(), 'bin/ibu'), 'serve', '--data', store, '--listen', `127.0.0.1:${port}`, '--admin-token', admin, '--precompute', '0'],
      {
        env: { ...process.env, IBU_ENROLLMENT_SECRET: secret },
        stdio: ['ignore', logFd.fd, logFd.fd],
      },
    );
    await logFd.close();
    for (let i = 0; ; i++) {
      if (
        await fetch(`${base}/v1/channels/stable/releases`).then(
          (r) => r.ok,
          () => false,
        )
      )
        break;
      if (i > 150 || server.exitCode !== null) throw new DemoError('ibu serve did not come up:\n' + (await fsp.readFile(serverLog, 'utf8')).slice(-2000));
      await new Promise((r) => setTimeout(r, 200));
    }
    say(`server listening on ${base} (dashboard: ${base}/dashboard); the device sees it as http://10.0.2.100`);

    step(`enrolling ${DEVICE} and building its disk (GPT: ESP with GRUB, host ext4 with /images/1.0.img, grubenv default_image=1.0)`);
    const enr = await fetch(`${base}/v1/devices/enroll`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      // The device's own key signs the request (docs/fleet.md "Enrollment"); the demo's device keeps none afterwards.
      body: JSON.stringify(signEnrollment(newDeviceKey(), { deviceId: DEVICE, enrollmentSecret: secret })),
    });
    if (enr.status !== 200) throw new DemoError(`enrollment failed with HTTP ${enr.status}: ${await enr.text()}`);
    const { token } = (await enr.json()) as { token: string };
    const hostTree = path.join(work, 'host');
    await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
    await fsp.copyFile(img1, path.join(hostTree, 'images/1.0.img'));
    await fsp.mkdir(path.join(hostTree, 'ibu-e2e/keyring'), { recursive: true });
    await fsp.copyFile(path.join(keys, 'signing.pub'), path.join(hostTree, 'ibu-e2e/keyring/signing.pub'));
    await fsp.writeFile(
      path.join(hostTree, 'ibu-e2e/agent.json'),
      JSON.stringify(
        {
          server: { url: 'http://10.0.2.100', deviceId: DEVICE, token },
          channel: 'stable',
          keyring: '/host/ibu-e2e/keyring',
          checkpoint: 'fsfreeze',
          reboot: { command: ['reboot', '-f'], forceCommand: ['reboot', '-f'], forceAfterSeconds: 0, sysrqAfterSeconds: 0 },
          download: { deltaWaitSeconds: 600, maxRetryAfterSeconds: 5 },
          health: { deadlineSeconds: 30, checks: HEALTHY_CHECKS },
          pollSeconds: 2,
        },
        null,
        2,
      ),
    );
    await fsp.writeFile(path.join(hostTree, 'ibu-e2e/run.sh'), RUN_SH);
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1.0');
    const disk = path.join(work, 'disk.img');
    const offset = await makeDisk({ efi, hostTree, hostMiB: 1024, out: disk });
    await fsp.rm(hostTree, { recursive: true, force: true });
    const host = new HostFs(disk, offset, work);
    await fsp.rm(img1, { force: true });
    await fsp.rm(img2, { force: true });

    step('booting the device from 1.0 in QEMU (OVMF + GRUB, TCG: slow, a few minutes; interesting serial lines follow)');
    const follower = followServerLog(serverLog, base);
    let headline = 0;
    const res = await boot({
      disk,
      logFile: path.join(work, 'device.log'),
      memMiB: 1024,
      extra: guestNetArgs(port),
      timeoutMs: 1_500_000,
      onLine: (raw) => {
        const h = headline < HEADLINES.length && HEADLINES[headline][0].test(raw) ? HEADLINES[headline++] : null;
        if (h?.[2] === 'before') step(h[1]);
        const shown = interesting(raw);
        if (shown) say(`[device] ${shown}`);
        if (h?.[2] === 'after') step(h[1]);
      },
    });
    await follower.stop();
    if (follower.chunkRequests()) say(`[server] ${follower.chunkRequests()} chunk requests served`);
    say(`boot timeline: ${timeline(res.log)}`);
    const tail = res.log.split('\n').slice(-40).join('\n');
    if (res.timedOut || res.stuck !== null)
      throw new DemoError(`the device did not finish (${res.timedOut ? 'timeout' : `stuck at: ${res.stuck}`}); serial log tail:\n${tail}`);
    const miss = missingInOrder(res.log, [...UPGRADE_STORY]);
    if (miss) throw new DemoError(`the upgrade story did not complete: ${miss}; serial log tail:\n${tail}`);

    step('result');
    const delta = await fetch(`${base}/v1/deltas/1.0/2.0`);
    const deltaBytes = delta.ok ? (await delta.arrayBuffer()).byteLength : 0;
    if (deltaBytes) say(`delta 1.0 -> 2.0 the device downloaded: ${formatBytes(deltaBytes)} (vs. a 256 MiB image)`);
    const dev = await fetch(`${base}/v1/admin/fleet/devices/${DEVICE}`, { headers: { authorization: `Bearer ${admin}` } });
    if (dev.status !== 200) throw new DemoError(`the server has no record of ${DEVICE} (HTTP ${dev.status}).`);
    const d = (await dev.json()) as { version: string; committedVersion: string; state: string; trial: boolean; lastErrorCode: string | null };
    say(
      `server record of ${DEVICE}: version=${d.version} committed=${d.committedVersion} state=${d.state} trial=${d.trial} lastError=${d.lastErrorCode ?? 'none'}`,
    );
    const db = new Database(path.join(store, 'fleet.sqlite'), { readonly: true });
    let events: { type: string; from: string; to: string }[];
    try {
      events = db.prepare('SELECT type, from_version AS "from", to_version AS "to" FROM events WHERE device_id = ? ORDER BY id').all(DEVICE) as typeof events;
    } finally {
      db.close();
    }
    say(`server events: ${events.map((e) => `${e.type} ${e.from}->${e.to}`).join(', ')}`);
    const env = (await host.readFile('/boot/grub/grubenv'))?.toString('latin1') ?? '';
    say(
      `final grubenv on the device disk: ${env
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .join(' ')}`,
    );
    const st = await host.bootState();
    const installed = (await host.debugfs('ls -l /images'))
      .split('\n')
      .map((l) => /(\S+\.img)\s*$/.exec(l)?.[1])
      .filter(Boolean);
    say(`installed images: ${installed.join(', ')}`);
    const record = { version: d.version, committedVersion: d.committedVersion, state: d.state, trial: d.trial, lastErrorCode: d.lastErrorCode };
    const ok = isDeepStrictEqual(record, COMMITTED_RECORD) && isDeepStrictEqual(events, UPGRADE_EVENTS) && st.defaultImage === '2.0' && !st.tryImage;
    if (!ok)
      throw new DemoError(`the final state is not "committed on 2.0": server ${JSON.stringify(d)}, grubenv default=${st.defaultImage} try=${st.tryImage}.`);
    process.stdout.write('\n');
    say(
      `SUCCESS: ${DEVICE} upgraded 1.0 -> 2.0 through a delta, trial-booted, health-checked and committed (${((Date.now() - t0) / 1000).toFixed(0)} s in all)`,
    );
  } finally {
    await cleanup();
  }
}

runDemo(main);
