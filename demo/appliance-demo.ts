/**
 * `npm run demo` (the README's main job): the whole upgrade story on a real Debian appliance, narrated for a human.
 * The example product (examples/appliance: Debian 13, systemd, Debian's kernel and initramfs,
 * openssh, the ibu agent from its .deb, the vendor's acme-agent service) is built by `ibu build`
 * as releases 1.0 and 2.0 (cached in /var/cache/ibu-e2e/appliance by their inputs, shared with
 * the e2e tests), signed and published with `ibu release publish`, served by `ibu serve` on
 * 127.0.0.1 (SQLite fleet). A QEMU device (OVMF, GRUB loopback, TCG) boots 1.0 from
 * /images/1.0.img under systemd; its agent's own timers check in, prepare the delta the server
 * builds on demand, apply it inside the maintenance window and reboot; GRUB boots 2.0 once;
 * upgradectl-confirm.service runs the health check (`systemctl is-system-running --wait`, the
 * vendor's check) and commits. The same parts as test/e2e/appliance-upgrade.test.ts (a).
 * Needs root and scripts/install-deps.sh.
 *
 *   npm run demo [-- --keep]      (IBU_DEMO_KEEP=1 also keeps the work dir)
 */
import { promises as fsp, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { e2eUnavailable, repoRoot, timeline, ibu, FleetServer } from '../test/e2e/harness.js';
import { applianceReleases, deviceFiles, makeApplianceDisk } from '../test/e2e/appliance.js';
import { RunningDevice, sshIdentity } from '../test/e2e/appliance-device.js';
import { formatBytes } from '../src/util/bytes.js';
import { DemoError, followServerLog, publishReleases, say, step, t0, runDemo } from './narration.js';

const keep = process.argv.includes('--keep') || process.env.IBU_DEMO_KEEP === '1';
const DEVICE = 'demo-device-1';

/**
 * The guest serial line worth showing, trimmed, or null: GRUB's and the initramfs' ibu lines,
 * the agent's and the vendor service's journal lines (forwarded to the console), systemd's
 * multi-user milestone, kernel panics. The rest stays in the log file.
 */
function interesting(raw: string): string | null {
  // the harness decodes serial bytes as latin1; the agent writes UTF-8 (arrows)
  const line = Buffer.from(raw, 'latin1').toString('utf8').trimEnd();
  const grub = line.indexOf('ibu: ');
  if (grub >= 0 && !line.startsWith('[ibu-initramfs') && !/upgradectl\[/.test(line)) return line.slice(grub);
  if (/^\[ibu-initramfs [^\]]*\] (starting|mounted)/.test(line)) return line;
  const journal = /\]\s+((?:upgradectl|acme-agent)\[\d+\]: .*)$/.exec(line);
  if (journal) return journal[1].slice(0, 220);
  const unit =
    /systemd\[1\]: ((?:Starting|Finished|Started|Stopping|Stopped) (?:upgradectl|acme-agent)\S* .*|Reached target multi-user\.target.*|.*Startup finished.*)$/.exec(
      line,
    );
  if (unit) return unit[1].slice(0, 200);
  if (/Kernel panic|FATAL/.test(line)) return line.slice(0, 240);
  return null;
}

/** Step headlines derived from the serial lines as they come. */
const HEADLINES: [RegExp, string][] = [
  [
    /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
    "GRUB boots the committed image 1.0 (loopback from /images/1.0.img); Debian's initramfs mounts it (boot=ibu loop=)",
  ],
  [/Reached target multi-user\.target/, "device is up on 1.0 under systemd; the agent's timers check in and prepare the upgrade"],
  [/upgradectl\[\d+\]: .*prepared/, "upgradectl-apply.timer: inside the maintenance window, apply (migrate the device's config, try_image=2.0) and reboot"],
  [/ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/, 'GRUB consumed try_image and boots 2.0 once, as a trial'],
  [/Starting upgradectl-confirm/, 'upgradectl-confirm.service: health check (systemctl is-system-running --wait, acme-agent --check), then commit'],
];

async function main(): Promise<void> {
  const unavailable = e2eUnavailable();
  if (unavailable) throw new DemoError(`the demo cannot run here: ${unavailable}.`);
  if (!existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js'))) throw new DemoError('dist/ is not built: run npm run build (npm run demo does it).');

  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-demo-'));
  let server: FleetServer | null = null;
  let dev: RunningDevice | null = null;
  const cleanup = async () => {
    await server?.stop();
    if (keep) say(`work dir kept: ${work} (serial log ${DEVICE}.log, server log server.log, disk disk-${DEVICE}.img)`);
    else await fsp.rm(work, { recursive: true, force: true });
  };
  process.once('SIGINT', () => {
    void cleanup().finally(() => process.exit(130));
  });
  say(`ibu demo: work dir ${work}${keep ? ' (kept)' : ' (removed at the end; --keep to keep it)'}`);
  try {
    step('the appliance: examples/appliance built by ibu build (Debian 13, systemd, kernel, openssh, ibu-device, acme-agent) as releases 1.0 and 2.0');
    say('cached in /var/cache/ibu-e2e/appliance by their inputs; a cold cache resolves the lock against deb.debian.org and builds (about 10 min here)');
    const tb = Date.now();
    const app = await applianceReleases({ log: (m) => say(m) });
    say(`releases ${app.built ? 'built' : 'taken from the cache'} in ${((Date.now() - tb) / 1000).toFixed(0)} s (${app.dir})`);
    for (const v of ['1.0', '2.0'] as const) {
      const st = await fsp.stat(app.images[v]);
      say(`${v}.img: ${formatBytes(st.size)} file, ${formatBytes(st.blocks * 512)} allocated (sparse)`);
    }
    const changes = JSON.parse((await ibu('release', 'diff', app.images['1.0'], app.images['2.0'], '--json')).stdout) as {
      packages: Record<'upgraded' | 'added' | 'removed', { name: string; from: string | null; to: string | null }[]>;
    };
    const { upgraded, added, removed } = changes.packages;
    const listed = [
      ...upgraded.map((p) => `${p.name} ${p.from} -> ${p.to}`),
      ...added.map((p) => `+${p.name} ${p.to}`),
      ...removed.map((p) => `-${p.name} ${p.from}`),
    ];
    say(`ibu release diff 1.0 2.0: ${listed.join(', ') || 'no package changes'}`);
    if (added.some((p) => p.name.startsWith('linux-image-')))
      say('2.0 brings a new kernel ABI: the device will boot its own kernel and initrd from the 2.0 image');

    const { keys, store } = await publishReleases(work, [
      ['1.0', app.images['1.0']],
      ['2.0', app.images['2.0']],
    ]);

    step('starting the server (ibu serve: releases, chunks, deltas on demand, fleet on SQLite)');
    server = await new FleetServer(store, path.join(work, 'server.log')).start();
    say(`server listening on ${server.base} (dashboard: ${server.base}/dashboard); the device sees it as http://10.0.2.100`);

    step(`enrolling ${DEVICE} and building its disk (GPT: ESP with GRUB, host ext4 with /images/1.0.img, grubenv default_image=1.0)`);
    const token = await server.enroll(DEVICE);
    const id = await sshIdentity(work);
    const { disk, host } = await makeApplianceDisk(app, {
      work,
      name: DEVICE,
      // the agent's timers shortened for a demo (on a device: minutes to hours, randomized)
      files: await deviceFiles({ name: DEVICE, token, keysDir: keys, sshPub: id.pub, hold: false }),
    });
    say("provisioned into the device's copy of 1.0: /etc/ibu/agent.json (server, token, health checks, what survives), the keyring, timer drop-ins");

    step('booting the device from 1.0 in QEMU (OVMF + GRUB, TCG: slow; interesting serial lines follow)');
    const follower = followServerLog(path.join(work, 'server.log'), server.base);
    let headline = 0;
    dev = await RunningDevice.start({
      disk,
      logFile: path.join(work, `${DEVICE}.log`),
      serverPort: server.port,
      id,
      onLine: (raw) => {
        if (headline < HEADLINES.length && HEADLINES[headline][0].test(raw)) step(HEADLINES[headline++][1]);
        const shown = interesting(raw);
        if (shown) say(`[device] ${shown}`);
      },
    });
    const srv = server;
    const deadline = Date.now() + 1_800_000;
    for (;;) {
      const r = await srv.deviceRecord(DEVICE);
      if (r.committedVersion === '2.0' && r.state === 'committed') break;
      if (Date.now() > deadline) throw new DemoError(`the device did not commit 2.0 in 30 min: server record ${JSON.stringify(r)}`);
      await new Promise((res) => setTimeout(res, 3000));
    }
    step('committed: the operator logs in over SSH (the host key made at the first boot is unchanged)');
    const status = await dev.ssh('upgradectl status --json; acme-agent --version; cat /etc/hostname');
    for (const l of status.trim().split('\n')) say(`[ssh] ${l.slice(0, 200)}`);
    const res = await dev.powerOff();
    await follower.stop();
    if (follower.chunkRequests()) say(`[server] ${follower.chunkRequests()} chunk requests served`);
    say(`boot timeline: ${timeline(res.log)}`);

    step('result');
    const delta = await fetch(`${srv.base}/v1/deltas/1.0/2.0`);
    const deltaBytes = delta.ok ? (await delta.arrayBuffer()).byteLength : 0;
    if (deltaBytes) say(`delta 1.0 -> 2.0 the device downloaded: ${formatBytes(deltaBytes)} (vs. a 1 GiB image)`);
    const d = await srv.deviceRecord(DEVICE);
    say(
      `server record of ${DEVICE}: version=${d.version} committed=${d.committedVersion} state=${d.state} trial=${d.trial} lastError=${d.lastErrorCode ?? 'none'}`,
    );
    const events = srv.events(DEVICE);
    say(`server events: ${events.map((e) => `${e.type} ${e.from}->${e.to}`).join(', ')}`);
    const st = await host.bootState();
    say(`boot state on the device disk: default_image=${st.defaultImage} try_image=${st.tryImage ?? ''}`);
    const ok =
      d.committedVersion === '2.0' && d.version === '2.0' && st.defaultImage === '2.0' && !st.tryImage && events.some((e) => e.type === 'upgrade-succeeded');
    if (!ok)
      throw new DemoError(`the final state is not "committed on 2.0": server ${JSON.stringify(d)}, grubenv default=${st.defaultImage} try=${st.tryImage}.`);
    process.stdout.write('\n');
    say(
      `SUCCESS: ${DEVICE} (Debian 13 appliance) upgraded 1.0 -> 2.0 by its own timers through a delta, trial-booted, health-checked and committed (${((Date.now() - t0) / 1000).toFixed(0)} s in all)`,
    );
  } finally {
    // a demo that failed half-way leaves no QEMU behind
    if (dev) await dev.kill().catch(() => null);
    await cleanup();
  }
}

runDemo(main);
