/**
 * The agent's switch methods through the real CLI (child processes, as root, temp dirs), issue #18.
 * What cannot run on a test machine is faked at the edge and said so: `kexec` is a script on PATH
 * that records its arguments and the kernel it was given (a real kexec would replace this kernel;
 * test/e2e/agent-switch.test.ts does that in QEMU), the reboot is the device's recording script,
 * and /sys, /proc (kexec support, lockdown, boot id, sysrq-trigger) are a generated tree
 * (IBU_SWITCH_PROBE_ROOT). The images, grubenv, journal and the ext4 reader are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { cli, makeDevice, ROOT_CMDLINE, type Device } from './device.js';
import { isRoot } from '../../src/util/exec.js';

const skip = isRoot() ? false : 'needs root (mke2fs -d ownership, loop mounts)';

interface Probe {
  env: Record<string, string>;
  kexecLog: string;
  sysrq: string;
  setBootId(id: string): Promise<void>;
}

async function probe(dev: Device, o: { lockdown?: string } = {}): Promise<Probe> {
  const root = path.join(dev.dir, 'probe');
  await fsp.mkdir(path.join(root, 'sys/kernel/security'), { recursive: true });
  await fsp.mkdir(path.join(root, 'proc/sys/kernel/random'), { recursive: true });
  await fsp.writeFile(path.join(root, 'sys/kernel/kexec_loaded'), '0\n');
  await fsp.writeFile(path.join(root, 'sys/kernel/security/lockdown'), o.lockdown ?? '[none] integrity confidentiality\n');
  const sysrq = path.join(root, 'proc/sysrq-trigger');
  await fsp.writeFile(sysrq, '');
  const setBootId = (id: string) => fsp.writeFile(path.join(root, 'proc/sys/kernel/random/boot_id'), `${id}\n`);
  await setBootId('boot-1');
  const bin = path.join(dev.dir, 'bin');
  await fsp.mkdir(bin, { recursive: true });
  const kexecLog = path.join(dev.dir, 'kexec.log');
  // records its arguments and the first line of the kernel and initrd files it was handed
  await fsp.writeFile(
    path.join(bin, 'kexec'),
    `#!/bin/sh\necho "args: $*" >> '${kexecLog}'\nif [ "$1" = -l ]; then head -n1 "$2" >> '${kexecLog}'; head -n1 "\${3#--initrd=}" >> '${kexecLog}'; fi\n`,
    { mode: 0o755 },
  );
  return { env: { IBU_SWITCH_PROBE_ROOT: root, PATH: `${bin}:${process.env.PATH}`, IBU_RUN_DIR: path.join(dev.dir, 'run') }, kexecLog, sysrq, setBootId };
}

const journal = async (dev: Device) => JSON.parse(await fsp.readFile(path.join(dev.images, '.ibu', 'state.json'), 'utf8'));
const RELEASES = [{ version: '1.0' }, { version: '2.0' }];

test('kexec: the kernel read from the image, the trial command line, no try flag; the trial commits; the method is reported', { skip }, async () => {
  const dev = await makeDevice({ running: '1.0', releases: RELEASES });
  try {
    const p = await probe(dev);
    await dev.writeConfig({ reboot: { ...(dev.config.reboot as object), kexecCommand: [path.join(dev.dir, 'fake-reboot'), 'kexec-e'] } });
    assert.equal((await cli(dev, ['init', '--default', '1.0'])).code, 0);
    let r = await cli(dev, ['prepare', '--version', '2.0', '--json'], p.env);
    assert.equal(r.code, 0, r.stderr);
    r = await cli(dev, ['apply', '--now', '--method', 'kexec', '--json'], p.env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /switch into 2\.0 by kexec \(asked: kexec\): kexec is available/);
    assert.equal((await fsp.readFile(dev.rebootLog, 'utf8')).trim(), 'kexec-e', 'systemctl kexec (here: the recording script), not a reboot');
    const kx = (await fsp.readFile(p.kexecLog, 'utf8')).split('\n');
    assert.match(
      kx[0]!,
      new RegExp(
        `^args: -l \\S+/kexec/vmlinuz --initrd=\\S+/kexec/initrd.img --command-line=${ROOT_CMDLINE} loop=/images/2\\.0\\.img ibu\\.version=2\\.0 ibu\\.trial=1$`,
      ),
    );
    assert.deepEqual(kx.slice(1, 3), ['kernel 2.0', 'initrd 2.0'], "2.0's own kernel and initrd, read from its image file");
    assert.equal((await dev.env()).try_image, undefined, 'kexec does not record a try-once: a firmware reboot boots 1.0');
    assert.equal((await journal(dev)).switch.method, 'kexec');
    await assert.rejects(fsp.access(path.join(dev.dir, 'run', 'kexec')), 'the extracted kernel is not left behind');

    // killed before the kexec happened (same boot id): apply loads and switches again
    r = await cli(dev, ['apply', '--now', '--json'], p.env);
    assert.equal(r.json!.outcome, 'rebooting', r.stderr);
    assert.equal((await fsp.readFile(p.kexecLog, 'utf8')).match(/args: -l/g)!.length, 2);

    // the kexec: a new kernel (boot id), the trial command line; confirm commits
    await p.setBootId('boot-2');
    await fsp.writeFile(dev.cmdline, `${ROOT_CMDLINE} loop=/images/2.0.img ibu.version=2.0 ibu.trial=1\n`);
    r = await cli(dev, ['confirm', '--json'], p.env);
    assert.equal(r.json!.outcome, 'committed', r.stderr);
    assert.equal((await dev.env()).default_image, '2.0');
    const ev = (await journal(dev)).pendingEvents.map((e: { type: string; method?: string }) => [e.type, e.method ?? null]);
    assert.deepEqual(ev, [
      ['apply-started', null],
      ['upgrade-succeeded', 'kexec'],
    ]);
  } finally {
    await dev.cleanup();
  }
});

test('kexec: a trial that dies ends in a firmware reboot on the committed image, recorded as a rollback', { skip }, async () => {
  const dev = await makeDevice({ running: '1.0', releases: RELEASES });
  try {
    const p = await probe(dev);
    await dev.writeConfig({ reboot: { ...(dev.config.reboot as object), method: 'kexec' } });
    assert.equal((await cli(dev, ['init', '--default', '1.0'])).code, 0);
    assert.equal((await cli(dev, ['prepare', '--version', '2.0'], p.env)).code, 0);
    let r = await cli(dev, ['apply', '--now', '--json'], p.env);
    assert.equal(r.code, 0, r.stderr);
    // the trial kernel panics; the reset goes through the firmware and GRUB, which boots default_image
    await p.setBootId('boot-3');
    assert.equal(await dev.boot(), '1.0');
    r = await cli(dev, ['confirm', '--json'], p.env);
    assert.equal(r.json!.outcome, 'rolled-back', r.stderr);
    const j = await journal(dev);
    assert.equal(j.state, 'rolled-back');
    assert.deepEqual(j.failedVersions, ['2.0']);
    assert.deepEqual(j.pendingEvents.at(-1).type, 'rolled-back');
    assert.deepEqual(j.pendingEvents.at(-1).method, 'kexec');
  } finally {
    await dev.cleanup();
  }
});

test('auto under Secure Boot lockdown: the agent says so and reboots normally with try-once', { skip }, async () => {
  const dev = await makeDevice({ running: '1.0', releases: RELEASES });
  try {
    const p = await probe(dev, { lockdown: 'none [integrity] confidentiality\n' });
    await dev.writeConfig({ reboot: { ...(dev.config.reboot as object), method: 'auto' } });
    assert.equal((await cli(dev, ['init', '--default', '1.0'])).code, 0);
    assert.equal((await cli(dev, ['prepare', '--version', '2.0'], p.env)).code, 0);
    const r = await cli(dev, ['apply', '--now', '--json'], p.env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /by reboot \(asked: auto\): no soft-reboot: PID 1 is not systemd; no kexec: the kernel is locked down \(integrity, Secure Boot\); rebooting normally/,
    );
    assert.equal((await dev.env()).try_image, '2.0');
    assert.equal((await fsp.readFile(dev.rebootLog, 'utf8')).trim(), 'reboot');
    await assert.rejects(fsp.access(p.kexecLog), 'kexec never ran');
    const bad = await cli(dev, ['apply', '--method', 'warp', '--json'], p.env);
    assert.equal(bad.code, 2);
    assert.match(bad.stdout, /USAGE.*--method must be one of reboot, kexec, soft-reboot, auto/);
  } finally {
    await dev.cleanup();
  }
});

test('a reboot that does not happen escalates to reboot -f, then sysrq b; the next boot reports it', { skip }, async () => {
  const dev = await makeDevice({ running: '1.0', releases: RELEASES });
  try {
    const p = await probe(dev);
    await dev.writeConfig({ reboot: { ...(dev.config.reboot as object), forceAfterSeconds: 0.2, sysrqAfterSeconds: 0.2 } });
    assert.equal((await cli(dev, ['init', '--default', '1.0'])).code, 0);
    assert.equal((await cli(dev, ['prepare', '--version', '2.0'], p.env)).code, 0);
    let r = await cli(dev, ['apply', '--now', '--json'], p.env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /still running 0\.2 s after '\S+fake-reboot reboot'; escalating: \S+fake-reboot force/);
    assert.match(r.stderr, /escalating: sysrq b/);
    assert.equal(await fsp.readFile(p.sysrq, 'utf8'), 'b', 'sysrq b written to the (generated) /proc/sysrq-trigger');
    assert.deepEqual((await fsp.readFile(dev.rebootLog, 'utf8')).trim().split('\n'), ['reboot', 'force']);
    assert.deepEqual(
      (await journal(dev)).escalation.steps.map((s: { step: string }) => s.step.replace(/^\S+fake-reboot/, 'fake-reboot')),
      ['fake-reboot reboot', 'fake-reboot force', 'sysrq b'],
    );
    // a later run in the same boot reports nothing yet
    r = await cli(dev, ['status', '--json'], p.env);
    // after the reset: the trial (GRUB's try-once), confirm reports the escalation and commits
    await p.setBootId('boot-2');
    assert.equal(await dev.boot(), '2.0');
    r = await cli(dev, ['confirm', '--json'], p.env);
    assert.equal(r.json!.outcome, 'committed', r.stderr);
    const j = await journal(dev);
    assert.equal(j.escalation, null);
    const stuck = j.pendingEvents.find((e: { type: string }) => e.type === 'reboot-stuck');
    assert.equal(stuck.error.code, 'REBOOT_STUCK');
    assert.match(stuck.error.message, /The switch by reboot did not happen by itself; it escalated through .*'sysrq b'/);
    assert.deepEqual([stuck.fromVersion, stuck.toVersion], ['1.0', '2.0']);
  } finally {
    await dev.cleanup();
  }
});
