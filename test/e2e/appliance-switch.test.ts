// test-needs: root (loop mounts; QEMU). scripts/test-files.sh reads this line.
/**
 * Issue #18 on the real appliance (Debian 13, systemd 257, the agent from its .deb), one
 * device's story in one QEMU run: 2.0 and 4.0 carry the same kernel and initrd, so the agent,
 * told `reboot.method: soft-reboot`, mounts 4.0 at /run/nextroot (the host bound at its /host as
 * the initramfs does) and runs `systemctl soft-reboot`: no firmware, GRUB or kernel boot. The
 * confirm unit runs in the new root, finds it is a trial (the root's loop device is backed by
 * 4.0.img, the committed default is 2.0) and commits. The boot id stays the same throughout.
 * A second device (second describe) switches by kexec: 1.0 -> 2.0 onto a new kernel ABI without
 * firmware or GRUB, then into a signed release with a corrupt initrd whose kernel panics; the
 * firmware reboot lands on the committed 2.0.
 * IBU_APPLIANCE_REUSE=DIR runs it against a release set built earlier (the images then carry
 * that build's agent; this checkout's agent files are copied into the device's own 2.0 image).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { e2eUnavailable, repoRoot, FleetServer, ibu, timeline, missingInOrder } from './harness.js';
import { deviceFiles, makeApplianceDisk, type Appliance, type DeviceFiles, publishAppliance } from './appliance.js';
import { closeApplianceStory, openApplianceStory } from './appliance-story.js';
import { run } from '../../src/util/exec.js';
import { RunningDevice, type SshIdentity } from './appliance-device.js';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');

/** This checkout's agent modules, for a device whose image came from an older build (IBU_APPLIANCE_REUSE only). */
async function checkoutAgent(): Promise<DeviceFiles> {
  if (!process.env.IBU_APPLIANCE_REUSE) return {};
  const files: DeviceFiles = {};
  for (const f of ['switch.js', 'reboot.js', 'agent.js', 'running-version.js', 'state-machine.js', 'reboot-method.js']) {
    files[`/usr/lib/ibu/dist/src/agent/${f}`] = await fsp.readFile(path.join(repoRoot(), 'dist/src/agent', f), 'utf8');
  }
  return files;
}

/**
 * Downtime of a switch from the serial log (QEMU wall clock, seconds; for docs/benchmarks.md,
 * never asserted on): the vendor service stopped after the agent started the switch, to the new
 * release's vendor service running.
 */
export function switchDowntime(log: string, to: string, acmeTo: string): number | null {
  const lines = log.split('\n');
  const t = (l: string) => Number(/^\[\s*([\d.]+)\]/.exec(l)?.[1] ?? NaN);
  const chosen = lines.findIndex((l) => l.includes(`switch into ${to} by `));
  const i = lines.findIndex((l, k) => k > chosen && /rebooting \((reboot|kexec|soft-reboot)\)/.test(l));
  if (i < 0) return null;
  const stop = lines.findIndex((l, k) => k > i && /acme-agent stopped/.test(l));
  const up = stop < 0 ? -1 : lines.findIndex((l, k) => k > stop && new RegExp(`acme-agent ${acmeTo.replace('.', '\\.')} running`).test(l));
  return up < 0 ? null : Math.round((t(lines[up]!) - t(lines[stop]!)) * 10) / 10;
}

describe('the Debian appliance switches images without a firmware reboot (issue #18): soft-reboot', { skip: unavailable ?? false }, () => {
  let work = '';
  let app: Appliance;
  let server: FleetServer;
  let keys = '';
  let store = '';
  let id: SshIdentity;
  let dev: RunningDevice | null = null;
  let published4 = false;

  const publish = (v: '2.0' | '3.0' | '4.0') => publishAppliance(app, v, store, keys);

  before(async () => {
    ({ work, app, keys, store, server, id } = await openApplianceStory({
      prefix: 'ibu-e2e-switch-',
      publish: (s) => publishAppliance(s.app, '2.0', s.store, s.keys),
    }));
  });
  after(() => closeApplianceStory({ dev, server, work }));

  /** The device's events as [type, from, to], a repeat of the one before folded (see the known gap below). */
  function foldedEvents(name: string): (string | undefined)[][] {
    const seen = server.events(name).map((e) => [e.type, e.from, e.to]);
    const folded = seen.filter((e, i) => i === 0 || JSON.stringify(e) !== JSON.stringify(seen[i - 1]));
    if (folded.length !== seen.length) console.log(`${name}: repeated events from the device: ${JSON.stringify(seen)}`);
    return folded;
  }

  /** A device on 2.0 upgraded to 4.0 by its timers with reboot.method = method; returns its serial log. */
  async function upgrade(
    method: 'soft-reboot' | 'reboot',
    name: string,
    o: { failFirst?: boolean } = {},
  ): Promise<{
    log: string;
    bootBefore: string;
    after: string;
    fallback: string;
    host: { bootState(): Promise<{ defaultImage: string | null; tryImage: string | null }> };
  }> {
    const token = await server.enroll(name);
    const { disk, host } = await makeApplianceDisk(app, {
      work,
      name,
      first: '2.0',
      files: {
        ...(await deviceFiles({ name, token, keysDir: keys, sshPub: id.pub, hold: false, config: { reboot: { method } } })),
        ...(await checkoutAgent()),
      },
    });
    // two or three TCG boots and two deltas built on demand: over 30 min at load 20 (2026-12-04)
    dev = await RunningDevice.start({ disk, logFile: path.join(work, `${name}.log`), serverPort: server.port, id, timeoutMs: 4_800_000 });
    const d = dev;
    await d.waitFor(/Reached target .*Multi-User System/);
    let fallback = '';
    if (o.failFirst) {
      // 3.0's vendor service fails: the trial (same kernel, so soft-reboot too) fails its health
      // check and the agent goes back to the committed 2.0 by a full reboot.
      await publish('3.0');
      await server.waitForRecord(name, () => server.events(name).some((e) => e.type === 'upgrade-failed'), 2_400_000);
      fallback = await d.ssh('cat /proc/cmdline; acme-agent --version; upgradectl status --json');
    }
    const bootBefore = (await d.ssh('cat /proc/sys/kernel/random/boot_id')).trim();
    if (!published4) await publish('4.0');
    published4 = true;
    await server.waitForRecord(name, (r) => r.committedVersion === '4.0' && r.state === 'committed', 2_400_000);
    const after = await d.ssh('cat /proc/sys/kernel/random/boot_id; cat /proc/cmdline; acme-agent --version; upgradectl status --json');
    // Known gap (docs/agent.md): after a soft-reboot the server may get apply-started twice (seen
    // on the first run, 2026-12-04); the story is checked with repeats folded.
    const folded = foldedEvents(name);
    assert.deepEqual(folded.slice(o.failFirst ? 2 : 0), [
      ['apply-started', '2.0', '4.0'],
      ['upgrade-succeeded', '2.0', '4.0'],
    ]);
    const res = await d.powerOff();
    dev = null;
    console.log(`${name}: ${timeline(res.log)}`);
    console.log(`${name}: downtime 2.0 -> 4.0 by ${method} (s): ${switchDowntime(res.log, '4.0', '1.3')}`);
    return { log: res.log, bootBefore, after, host, fallback };
  }

  test('soft-reboot: 3.0 fails its health check and ends on the committed 2.0; 2.0 -> 4.0 commits in the new root, same boot id', async () => {
    const { log, bootBefore, after: after4, host, fallback } = await upgrade('soft-reboot', 'appliance-soft', { failFirst: true });
    assert.match(fallback, /acme-agent 1\.1/);
    assert.match(fallback, /"running":"2\.0","committed":"2\.0"/);
    assert.deepEqual(foldedEvents('appliance-soft').slice(0, 2), [
      ['apply-started', '2.0', '3.0'],
      ['upgrade-failed', '3.0', '2.0'],
    ]);
    assert.match(log, /switch into 3\.0 by soft-reboot/);
    assert.match(log, /acme-agent 1\.2: cannot start/);
    assert.ok(after4.startsWith(bootBefore), `a soft-reboot keeps the boot id: ${after4}`);
    assert.match(after4, /loop=\/images\/2\.0\.img/, 'the kernel is still the one booted with 2.0');
    assert.match(after4, /acme-agent 1\.3/);
    assert.match(after4, /"running":"4\.0","committed":"4\.0"/);
    assert.match(log, /switch into 4\.0 by soft-reboot/);
    const end = await host.bootState();
    assert.deepEqual([end.defaultImage, end.tryImage], ['4.0', null]);
  });

  // The anchor for docs/benchmarks.md: the same pair by a full reboot (firmware, GRUB, kernel).
  // Not in CI (a fourth TCG boot); IBU_SWITCH_ANCHOR=1 runs it.
  test(
    '2.0 -> 4.0 by a full reboot: the downtime anchor',
    { skip: process.env.IBU_SWITCH_ANCHOR === '1' ? false : 'IBU_SWITCH_ANCHOR=1 runs it' },
    async () => {
      const { after, host } = await upgrade('reboot', 'appliance-reboot');
      assert.match(after, /loop=\/images\/4\.0\.img/);
      const end = await host.bootState();
      assert.deepEqual([end.defaultImage, end.tryImage], ['4.0', null]);
    },
  );
});

/**
 * A release whose initrd is corrupt (what a build that wrote a bad initrd ships: the image is
 * signed as built, so only booting it shows the fault): 2.0's image with its initrd replaced by a
 * MiB out of the middle of the real one. The kernel finds no initramfs, cannot mount
 * `root=UUID=...` by itself and panics ("VFS: Unable to mount root fs"); `panic=5` (GRUB's
 * command line, which the kexec trial inherits) resets the machine.
 */
async function brokenInitrdImage(from: string, out: string, mnt: string): Promise<void> {
  await run('cp', ['--sparse=always', from, out]);
  await fsp.mkdir(mnt, { recursive: true });
  await run('mount', ['-o', 'loop', out, mnt]);
  try {
    const initrd = path.join(mnt, await fsp.readlink(path.join(mnt, 'initrd.img')));
    const real = await fsp.readFile(initrd);
    await fsp.writeFile(initrd, real.subarray(real.length >> 1, (real.length >> 1) + (1 << 20)));
  } finally {
    await run('umount', [mnt]);
    await fsp.rm(mnt, { recursive: true, force: true });
  }
}

/** The serial lines from the first matching `from` up to (not including) the first matching `to` after it. */
function linesBetween(lines: string[], from: RegExp, to: RegExp): string[] {
  const a = lines.findIndex((l) => from.test(l));
  if (a < 0) return [];
  const b = lines.findIndex((l, i) => i > a && to.test(l));
  return lines.slice(a, b < 0 ? undefined : b);
}

describe('the Debian appliance switches images by kexec (issue #18): a new kernel ABI, then a trial kernel that panics', { skip: unavailable ?? false }, () => {
  let work = '';
  let app: Appliance;
  let server: FleetServer;
  let keys = '';
  let store = '';
  let id: SshIdentity;
  let dev: RunningDevice | null = null;

  before(async () => {
    ({ work, app, keys, store, server, id } = await openApplianceStory({
      prefix: 'ibu-e2e-kexec-',
      publish: (s) => publishAppliance(s.app, '1.0', s.store, s.keys),
    }));
  });
  after(() => closeApplianceStory({ dev, server, work }));

  test('kexec 1.0 -> 2.0 (6.12.117 -> 6.12.118) commits without firmware or GRUB; a kexec into a release that panics ends on the committed 2.0', async () => {
    const name = 'appliance-kexec';
    const token = await server.enroll(name);
    const { disk, host } = await makeApplianceDisk(app, {
      work,
      name,
      first: '1.0',
      files: {
        ...(await deviceFiles({ name, token, keysDir: keys, sshPub: id.pub, hold: false, config: { reboot: { method: 'kexec' } } })),
        ...(await checkoutAgent()),
      },
    });
    await publishAppliance(app, '2.0', store, keys);
    dev = await RunningDevice.start({ disk, logFile: path.join(work, `${name}.log`), serverPort: server.port, id, timeoutMs: 3_600_000 });
    const d = dev;
    await d.waitFor(/Reached target .*Multi-User System/);
    const on1 = await d.ssh('uname -r; cat /proc/sys/kernel/random/boot_id');
    assert.match(on1, /^6\.12\.117\+deb13-amd64\n/);

    // (1) 2.0 by kexec: a new kernel, no firmware and no GRUB between the switch and it
    await server.waitForRecord(name, (r) => r.committedVersion === '2.0' && r.state === 'committed', 2_400_000);
    const on2 = await d.ssh('uname -r; cat /proc/sys/kernel/random/boot_id; cat /proc/cmdline; acme-agent --version; upgradectl status --json');
    assert.match(on2, /^6\.12\.118\+deb13-amd64\n/, 'the kexec trial runs 2.0 kernel (new ABI)');
    assert.notEqual(on2.split('\n')[1], on1.split('\n')[1], 'kexec starts a new boot (new boot id)');
    assert.match(on2, /loop=\/images\/2\.0\.img .*ibu\.version=2\.0 ibu\.trial=1/);
    assert.match(on2, /acme-agent 1\.1/);
    assert.match(on2, /"running":"2\.0","committed":"2\.0"/);
    const sw = linesBetween(d.lines, /rebooting \(kexec\): systemctl kexec/, /Linux version 6\.12\.118/);
    assert.ok(sw.length > 0, 'the serial log shows the switch and the new kernel');
    assert.deepEqual(
      sw.filter((l) => /BdsDxe|ibu: booting image|ibu: default_image=/.test(l)),
      [],
      'no firmware and no GRUB between the switch and the new kernel',
    );
    console.log(
      `${name}: switch -> new kernel, ${sw.length} serial lines; last of the old kernel: ${sw
        .filter((l) => /kexec|reboot:/.test(l))
        .slice(-2)
        .join(' | ')}`,
    );
    assert.deepEqual(
      server.eventsWithMethod(name).map((e) => [e.type, e.from, e.to, e.method]),
      [
        ['apply-started', '1.0', '2.0', null],
        ['upgrade-succeeded', '1.0', '2.0', 'kexec'],
      ],
    );

    // (2) 5.0, signed and verified, whose initrd is corrupt: the kexec'd kernel panics, panic=5
    // resets the machine, the firmware and GRUB boot the committed 2.0 (kexec never set try_image)
    const img5 = path.join(work, '5.0.img');
    await brokenInitrdImage(app.images['2.0'], img5, path.join(work, 'mnt-5.0'));
    const mark = d.mark();
    await ibu('release', 'publish', '--image', img5, '--version', '5.0', '--store', store, '--key', path.join(keys, 'signing.key'), '--channel', 'stable');
    await server.waitForRecord(name, () => server.events(name).some((e) => e.to === '2.0' && e.from === '5.0'), 2_400_000);
    const back = await d.ssh('uname -r; cat /proc/cmdline; acme-agent --version; upgradectl status --json');
    const story = d.lines.slice(mark).join('\n');
    assert.equal(
      missingInOrder(story, [
        /switch into 5\.0 by kexec/,
        /kexec loaded 5\.0: .*loop=\/images\/5\.0\.img .*panic=5 .*ibu\.version=5\.0 ibu\.trial=1/,
        /rebooting \(kexec\): systemctl kexec/,
        /Kernel panic - not syncing/,
        /BdsDxe: starting/,
        /ibu: default_image=2\.0 try= boot=2\.0 trial=0/,
        /acme-agent 1\.1 running/,
      ]),
      null,
    );
    assert.doesNotMatch(story, /try=5\.0/, 'GRUB never saw a try flag for 5.0');
    assert.match(back, /^6\.12\.118\+deb13-amd64\n/);
    assert.match(back, /loop=\/images\/2\.0\.img/);
    assert.match(back, /"running":"2\.0","committed":"2\.0"/);
    const events = server.eventsWithMethod(name).map((e) => [e.type, e.from, e.to, e.method]);
    console.log(`${name}: events ${JSON.stringify(events)}`);
    assert.deepEqual(events.slice(2, 3), [['apply-started', '2.0', '5.0', null]]);
    assert.ok(
      events.slice(3).some(([type, from, to, method]) => /rolled-back|upgrade-failed/.test(type ?? '') && from === '5.0' && to === '2.0' && method === 'kexec'),
      `the server sees the failed kexec trial with its method: ${JSON.stringify(events)}`,
    );
    const res = await d.powerOff();
    dev = null;
    console.log(`${name}: ${timeline(res.log)}`);
    const end = await host.bootState();
    assert.deepEqual([end.defaultImage, end.tryImage], ['2.0', null]);
  });
});
