/**
 * upgradectl adopt in QEMU (TCG), issue #19: Debian 12 machines installed the ordinary way
 * (test/e2e/make-conventional-disk.sh: mmdebstrap, the distribution kernel, grub-install +
 * update-grub in a chroot; cached) adopt release 1.0 from `ibu serve` on 127.0.0.1. In one QEMU
 * run per scenario the conventional system boots through its own GRUB, its systemd starts
 * `upgradectl adopt` (the agent staged on it like a vendor package, stage-conventional.sh),
 * which downloads the image seeded from the live root, migrates the configuration, installs
 * /etc/grub.d/05_ibu, runs update-grub and reboots; Debian's GRUB then boots /images/1.0.img
 * once as a trial, and the image's `upgradectl confirm` commits it or rolls back.
 *
 * The image adopted is the e2e model image (busybox + Node + ibu, the busybox initramfs), not yet
 * a trixie appliance built by `ibu build` (that image is another branch's work): said in docs/adopt.md.
 */
import { describe, test, before } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { GrubBootloader } from '../../src/boot/grub-bootloader.js';
import { e2eUnavailable, boot, guestNetArgs, repoRoot, bootMedia, stageNodeRoot, HostFs } from './harness.js';
import { useFleetServer } from './fleet-fixture.js';
import { HEALTHY_CHECKS } from './upgrade-story.js';

const unavailable =
  e2eUnavailable() ??
  (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)') ??
  (existsSync('/usr/bin/mmdebstrap') ? null : 'mmdebstrap is missing: run scripts/install-deps.sh');

/** The conventional system's boot unit: runs /ibu-e2e/conventional.sh once the network is up. */
const UNIT = `[Unit]
Description=ibu e2e driver on the conventional system
After=networking.service
Wants=networking.service
[Service]
Type=oneshot
ExecStart=/bin/sh /ibu-e2e/conventional.sh
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
`;

/**
 * On the conventional system: adopt when the test asked for it, until one run got as far as the
 * reboot into the trial (a power cut before that: adopt runs again); else report and power off.
 * The agent prints its crash points (IBU_AGENT_CRASH_TRACE) so the test can cut the power at one.
 */
const CONVENTIONAL_SH = `export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin NO_COLOR=1
C="ibu-node /opt/ibu/bin/upgradectl --config /ibu-e2e/agent.json"
echo "IBU-E2E CONVENTIONAL up kernel=$(uname -r)"
if [ -f /ibu-e2e/mode ] && ! grep -qs '"outcome":"rebooting"' /ibu-e2e/adopt.json; then
  IBU_AGENT_CRASH_TRACE=1 $C adopt --version 1.0 --no-reboot --json > /ibu-e2e/adopt.json; rc=$?
  sync
  echo "IBU-E2E adopt exit $rc: $(cut -c1-600 /ibu-e2e/adopt.json)"
  [ $rc = 0 ] && systemctl reboot
  sleep 600
fi
echo "IBU-E2E CONVENTIONAL back: $(cat /ibu-e2e/state 2>/dev/null)"
systemctl poweroff
`;

/** On the image (test/e2e/node-init.sh runs /host/ibu-e2e/run.sh): confirm, as upgradectl-confirm.service does. */
const IMAGE_SH = `C="node /opt/ibu/bin/upgradectl --config /host/ibu-e2e/image-agent.json"
$C confirm; echo "IBU-E2E confirm exit $?"
$C status --json | sed 's/^/IBU-E2E status /'
`;

describe('adopt in QEMU: bookworm machines installed the ordinary way move onto images', { skip: unavailable ?? false }, () => {
  const fleet = useFleetServer('ibu-e2e-adopt-');
  let nodeRoot = '';

  before(async () => {
    const { kit, initrd } = await bootMedia(fleet.work);
    nodeRoot = path.join(fleet.work, 'node-root');
    await stageNodeRoot(nodeRoot, { version: 'conventional', kit, initrd });
  });

  /** A conventional disk for `name`, enrolled on the server, with the agent staged and adoption requested. */
  async function machine(name: string, fw: 'efi' | 'bios', health: unknown[]): Promise<{ disk: string; root: HostFs }> {
    const disk = path.join(fleet.work, `${name}.img`);
    const out = (await run('bash', [path.join(repoRoot(), 'test/e2e/make-conventional-disk.sh'), '--firmware', fw, '--out', disk])).stdout;
    const offset = Number(/ROOT_OFFSET=(\d+)/.exec(out)?.[1]);
    const token = await fleet.server.enroll(name);
    const mnt = path.join(fleet.work, `mnt-${name}`);
    await fsp.mkdir(mnt);
    const loop = (await run('losetup', ['--find', '--show', '--offset', String(offset), disk])).stdout.trim();
    try {
      await run('mount', [loop, mnt]);
      try {
        await run('bash', [path.join(repoRoot(), 'test/e2e/stage-conventional.sh'), mnt, nodeRoot]);
        const e2e = path.join(mnt, 'ibu-e2e');
        await fsp.mkdir(path.join(e2e, 'keyring'), { recursive: true });
        await fsp.copyFile(path.join(fleet.build.keys, 'signing.pub'), path.join(e2e, 'keyring/signing.pub'));
        const common = {
          server: { url: 'http://10.0.2.100', deviceId: name, token },
          channel: 'stable',
          checkpoint: 'fsfreeze',
          download: { maxRetryAfterSeconds: 5 },
          health: { deadlineSeconds: 30, checks: health },
          pollSeconds: 2,
        };
        await fsp.writeFile(
          path.join(e2e, 'agent.json'),
          JSON.stringify({
            ...common,
            keyring: '/ibu-e2e/keyring',
            reboot: { command: ['systemctl', 'reboot'], forceCommand: ['reboot', '-f'], forceAfterSeconds: 90 },
          }),
        );
        // the image's view: the old root is /host (what adopt writes into the image's /etc/ibu/agent.json, with the e2e keyring path)
        await fsp.writeFile(
          path.join(e2e, 'image-agent.json'),
          JSON.stringify({
            ...common,
            keyring: '/host/ibu-e2e/keyring',
            hostMount: '/host',
            boot: { envDir: '/host/boot/ibu' },
            reboot: { command: ['reboot', '-f'], forceCommand: ['reboot', '-f'], forceAfterSeconds: 0 },
          }),
        );
        await fsp.writeFile(path.join(e2e, 'conventional.sh'), CONVENTIONAL_SH);
        await fsp.writeFile(path.join(e2e, 'run.sh'), IMAGE_SH);
        await fsp.writeFile(path.join(e2e, 'mode'), 'adopt\n');
        await fsp.writeFile(path.join(mnt, 'etc/systemd/system/ibu-e2e.service'), UNIT);
        await fsp.mkdir(path.join(mnt, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
        await fsp.symlink('/etc/systemd/system/ibu-e2e.service', path.join(mnt, 'etc/systemd/system/multi-user.target.wants/ibu-e2e.service'));
        // minutes under TCG on a loaded host, and nothing the story needs (udev settle, scrubs, timers)
        for (const u of ['ifupdown-pre.service', 'e2scrub_reap.service', 'e2scrub_all.timer', 'apt-daily.timer', 'apt-daily-upgrade.timer', 'fstrim.timer']) {
          await fsp.symlink('/dev/null', path.join(mnt, 'etc/systemd/system', u)).catch(() => {});
        }
        // what the adoption must carry over: a local user, the SSH host key, a data disk in fstab
        await fsp.appendFile(path.join(mnt, 'etc/fstab'), 'LABEL=data /srv/data ext4 defaults,nofail 0 2\n');
        await run('chroot', [mnt, 'useradd', '-m', '-u', '1000', '-p', '$6$e2e$adopted', 'alice']);
      } finally {
        await run('umount', [mnt]);
      }
    } finally {
      await run('losetup', ['-d', loop]);
    }
    return { disk, root: new HostFs(disk, offset, fleet.work) };
  }

  /** One QEMU run of a conventional machine, through its own GRUB under OVMF or SeaBIOS; a rescue shell counts as stuck. */
  const runMachine = (name: string, fw: 'efi' | 'bios', disk: string, patterns: RegExp[]): Promise<string> =>
    fleet.runDevice(name, disk, patterns, {
      firmware: fw === 'efi' ? 'uefi' : 'bios',
      timeoutMs: 1_800_000,
      stuckOn: [/\(initramfs\)|can't access tty|Give root password for maintenance|Dropping to a shell/],
    });

  async function envOf(root: HostFs) {
    const dir = await fsp.mkdtemp(path.join(fleet.work, 'env-'));
    try {
      for (const f of ['grubenv', 'grubenv.bak']) await root.debugfs(`dump /boot/ibu/${f} ${path.join(dir, f)}`);
      return await new GrubBootloader({ dir }).read();
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  for (const fw of ['efi', 'bios'] as const) {
    test(`(${fw === 'efi' ? 'a' : 'b'}) ${fw === 'efi' ? 'UEFI (OVMF), GPT' : 'BIOS (SeaBIOS), MBR'}: adopt, trial boot through Debian's GRUB, commit`, async () => {
      const name = `adopt-${fw}`;
      const { disk, root } = await machine(name, fw, HEALTHY_CHECKS);
      const log = await runMachine(name, fw, disk, [
        /IBU-E2E CONVENTIONAL up kernel=6\.1\./,
        /preflight passed: (UEFI, grub-efi-amd64|BIOS, grub-pc) 2\.06/,
        /IBU-E2E adopt exit 0/,
        /ibu: default_image= try=1\.0 boot=1\.0 trial=1/,
        /IBU-E2E RUNNING version=1\.0 trial=1/,
        /IBU-E2E confirm exit 0/,
        /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
        /IBU-E2E POWEROFF version=1\.0/,
      ]);
      // the guest prints the first 600 characters of adopt's JSON (a console line): shown, not parsed
      console.log(`${name}: adopt said ${(/IBU-E2E adopt exit 0: (.*)/.exec(log)?.[1] ?? '').slice(0, 400)}`);
      const st = await envOf(root);
      assert.deepEqual([st.defaultImage, st.tryImage, st.adopted ?? null], ['1.0', null, '1.0'], 'committed; the conventional system stays the last resort');
      assert.ok(await root.readFile('/etc/grub.d/05_ibu'), 'the grub.d script is installed');
      assert.match(
        (await root.readFile('/boot/grub/grub.cfg'))!.toString(),
        /### ibu: boot \/images[\s\S]*menuentry 'Debian GNU\/Linux'/,
        'update-grub put it before the Debian entries',
      );
      const rec = await fleet.server.deviceRecord(name);
      assert.deepEqual([rec.version, rec.committedVersion, rec.state], ['1.0', '1.0', 'committed']);
      // migrated into the image: read it out of the root fs and look inside
      const img = path.join(fleet.work, `${name}-1.0.img`);
      await root.debugfs(`dump /images/1.0.img ${img}`);
      const cat = async (p: string) => (await run('debugfs', ['-R', `cat ${p}`, img])).stdout;
      assert.match(await cat('/etc/passwd'), /^alice:x:1000:/m);
      assert.match(await cat('/etc/hostname'), /bookworm-conventional/);
      assert.match(await cat('/etc/fstab'), /^LABEL=data \/srv\/data ext4/m);
      assert.ok((await cat('/etc/ssh/ssh_host_ed25519_key')).includes('PRIVATE KEY'), 'SSH host key carried over');
      await fsp.rm(img, { force: true });
    });
  }

  test('(e) BIOS: power cut during adoption (entering the download): the conventional system boots, adopt runs again and commits', async () => {
    const name = 'adopt-powercut';
    const { disk, root } = await machine(name, 'bios', HEALTHY_CHECKS);
    const cut = await boot({
      disk,
      firmware: 'bios',
      logFile: path.join(fleet.work, `${name}-1.log`),
      memMiB: 1024,
      extra: guestNetArgs(fleet.server.port),
      timeoutMs: 1_800_000,
      killOn: /crash-point \d+ step download/,
    });
    assert.ok(cut.killedOn, `no power cut: the download step never started\n${cut.log.split('\n').slice(-40).join('\n')}`);
    await runMachine(name, 'bios', disk, [
      /IBU-E2E CONVENTIONAL up kernel=6\.1\./,
      /IBU-E2E adopt exit 0/,
      /ibu: default_image= try=1\.0 boot=1\.0 trial=1/,
      /IBU-E2E confirm exit 0/,
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
    ]);
    const st = await envOf(root);
    assert.deepEqual([st.defaultImage, st.tryImage, st.adopted ?? null], ['1.0', null, '1.0']);
  });

  test('(c) UEFI: the adopted image fails its health check: back on the conventional system, the server sees why', async () => {
    const name = 'adopt-unhealthy';
    const { disk, root } = await machine(name, 'efi', [{ name: 'app', command: ['false'], timeoutSeconds: 5 }]);
    await runMachine(name, 'efi', disk, [
      /IBU-E2E adopt exit 0/,
      /ibu: default_image= try=1\.0 boot=1\.0 trial=1/,
      // confirm reboots before its exit status could be printed (src/agent/reboot.ts: "rebooting (<method>): <command>")
      /upgradectl: health checks failed on 1\.0: app: exit 1/,
      /upgradectl: rebooting \(\w[\w-]*\): /,
      /ibu: adopted machine, no image to boot/,
      /IBU-E2E CONVENTIONAL back/,
    ]);
    const st = await envOf(root);
    assert.deepEqual([st.defaultImage, st.tryImage, st.adopted ?? null], [null, null, '1.0']);
    const rec = await fleet.server.deviceRecord(name);
    assert.equal(rec.lastErrorCode, 'HEALTH_CHECK_FAILED');
    assert.ok(
      fleet.server.events(name).some((e) => e.type === 'upgrade-failed' && e.errorCode === 'HEALTH_CHECK_FAILED'),
      JSON.stringify(fleet.server.events(name)),
    );
    assert.ok(await root.readFile('/home/alice/.bashrc'), 'the conventional system and its files are all there');
  });
});
