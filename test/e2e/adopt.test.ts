// test-needs: root (loop mounts, chroot, mmdebstrap; QEMU). scripts/test-files.sh reads this line.
/**
 * upgradectl adopt in QEMU (TCG), issue #19: Debian 12 machines installed the ordinary way
 * (test/e2e/make-conventional-disk.sh: mmdebstrap, the distribution kernel, grub-install +
 * update-grub in a chroot; cached) adopt the trixie appliance (examples/appliance built by
 * `ibu build`, test/e2e/appliance.ts: systemd, Debian's kernel and initramfs-tools initrd, the
 * agent from its .deb) from `ibu serve` on 127.0.0.1. The conventional system boots through its
 * own GRUB, its systemd starts `upgradectl adopt` (the agent staged on it like a vendor package,
 * stage-conventional.sh, configured in /etc/ibu as on any device), which downloads the image
 * seeded from the live root, migrates the configuration, installs /etc/grub.d/05_ibu, runs
 * update-grub; the driver reboots. Debian's GRUB then boots /images/<v>.img once as a trial, and
 * the appliance's own upgradectl-confirm.service runs its health check (`systemctl
 * is-system-running --wait` + `acme-agent --check`) and commits, or rolls back to the
 * conventional system. What was migrated is checked on the adopted device over SSH (root's key
 * migrated by the vendor's list; the SSH host key pinned to the conventional system's).
 * Cases chained on one disk where the story allows: (d) then (a) on UEFI, (e) then (b) on BIOS.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { GrubBootloader } from '../../src/boot/grub-bootloader.js';
import { e2eUnavailable, repoRoot, bootMedia, stageNodeRoot, HostFs, FleetServer, ibu } from './harness.js';
import { applianceReleases, publishAppliance, type Appliance, type ApplianceVersion } from './appliance.js';
import { RunningDevice, sshIdentity, type SshIdentity } from './appliance-device.js';
import { removeWorkDir } from './work-dir.js';

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
 * On the conventional system. (d) when /ibu-e2e/nospace is there (once): a file fills the root fs
 * but 200 MiB, adopt must fail with NO_SPACE and change nothing under /images, /boot, /etc (a
 * listing with sizes and mtimes before and after), then the file goes (the operator cleaned up).
 * Then adopt the version in /ibu-e2e/version until one run got as far as the trial (a power cut
 * before that: adopt runs again) and reboot into it; else report and power off. The agent prints
 * its crash points (IBU_AGENT_CRASH_TRACE) so the test can cut the power at one.
 */
const CONVENTIONAL_SH = `export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin NO_COLOR=1
C="ibu-node /opt/ibu/bin/upgradectl"
V=$(cat /ibu-e2e/version)
echo "IBU-E2E CONVENTIONAL up kernel=$(uname -r)"
snap() { find /images /boot /etc -xdev -printf '%p %s %T@\\n' 2>/dev/null | sort | md5sum; }
if [ -f /ibu-e2e/nospace ]; then
  rm /ibu-e2e/nospace; sync
  fallocate -l $(( $(df --output=avail -B1 / | tail -1) - 200 * 1048576 )) /srv/ibu-e2e-filler
  B=$(snap)
  $C adopt --version $V --no-reboot --json > /ibu-e2e/nospace.json 2>/ibu-e2e/nospace.err; rc=$?
  [ "$B" = "$(snap)" ] && t=no || t=yes
  echo "IBU-E2E nospace exit $rc touched=$t $(grep -o '"code":"[A-Z_]*"' /ibu-e2e/nospace.json)"
  echo "IBU-E2E nospace says: $(grep -o '"message":"[^"]*"' /ibu-e2e/nospace.json | cut -c1-400)"
  rm -f /srv/ibu-e2e-filler; sync
fi
if ! grep -qs '"outcome":"rebooting"' /ibu-e2e/adopt.json; then
  t0=$(date +%s)
  IBU_AGENT_CRASH_TRACE=1 $C adopt --version $V --no-reboot --json > /ibu-e2e/adopt.json; rc=$?
  sync
  echo "IBU-E2E adopt exit $rc in $(( $(date +%s) - t0 )) s: $(grep -o '"\\(downloadedBytes\\|liveSeedBytes\\|reusedBytes\\|totalBytes\\|imageBytes\\)":[0-9]*' /ibu-e2e/adopt.json | tr '\\n' ' ')"
  [ $rc = 0 ] && systemctl reboot
  sleep 600
fi
echo "IBU-E2E CONVENTIONAL back"
systemctl poweroff
`;

/** The appliance's own health check (test/e2e/appliance.ts deviceAgentConfig). */
const APPLIANCE_HEALTH = {
  deadlineSeconds: 240,
  checks: [
    { name: 'system up', command: ['systemctl', 'is-system-running', '--wait'], timeoutSeconds: 200, retry: false },
    { name: 'acme-agent', command: ['/usr/bin/acme-agent', '--check'], timeoutSeconds: 20 },
  ],
};

/** What the adopted device shows over SSH: identity, accounts, network file, data disk, the image it runs. */
const LOOK = [
  'echo "host=$(hostname) mid=$(cat /etc/machine-id) key=$(cut -d" " -f2 /etc/ssh/ssh_host_ed25519_key.pub)"',
  'grep ^alice: /etc/shadow | cut -d: -f1,2',
  'grep ^alice: /etc/passwd',
  'grep ^LABEL=data /etc/fstab',
  'grep address /etc/network/interfaces',
  'findmnt -no SOURCE,OPTIONS /',
  'findmnt -no TARGET /host',
  'grep ^VERSION_CODENAME /etc/os-release',
  'uname -r',
  'echo "acme=$(systemctl is-active acme-agent)"',
].join('; ');

describe('adopt in QEMU: bookworm machines installed the ordinary way move onto the trixie appliance image', { skip: unavailable ?? false }, () => {
  let work = '';
  let app: Appliance;
  let server: FleetServer;
  let keys = '';
  let store = '';
  let nodeRoot = '';
  let id: SshIdentity;
  const published = new Set<string>();
  const running: RunningDevice[] = [];

  before(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-e2e-adopt-'));
    const t0 = Date.now();
    app = await applianceReleases({ specDir: process.env.IBU_APPLIANCE_SPEC });
    console.log(`appliance releases ${app.built ? 'built' : 'from the cache'} in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${app.dir}`);
    keys = path.join(work, 'keys');
    await ibu('keys', 'generate', '--out', keys);
    store = path.join(work, 'store');
    await publish('2.0');
    server = await new FleetServer(store, path.join(work, 'server.log')).start();
    // the conventional system's agent: this checkout's (stage-node-root.sh's /opt/ibu)
    const { kit, initrd } = await bootMedia(work);
    nodeRoot = path.join(work, 'node-root');
    await stageNodeRoot(nodeRoot, { version: 'conventional', kit, initrd });
    id = await sshIdentity(work);
  });

  after(async () => {
    for (const d of running) await d.kill().catch(() => null);
    await server?.stop();
    await removeWorkDir(work);
  });

  async function publish(v: ApplianceVersion): Promise<void> {
    if (published.has(v)) return;
    await publishAppliance(app, v, store, keys);
    published.add(v);
  }

  /** A conventional disk for `name`, enrolled on the server, with the agent staged and configured, adopting `version`. */
  async function machine(
    name: string,
    fw: 'efi' | 'bios',
    version: ApplianceVersion,
    o: { nospace?: boolean } = {},
  ): Promise<{ disk: string; root: HostFs; before: { machineId: string; hostKey: string } }> {
    const disk = path.join(work, `${name}.img`);
    const out = (await run('bash', [path.join(repoRoot(), 'test/e2e/make-conventional-disk.sh'), '--firmware', fw, '--out', disk])).stdout;
    const offset = Number(/ROOT_OFFSET=(\d+)/.exec(out)?.[1]);
    const token = await server.enroll(name);
    const mnt = path.join(work, `mnt-${name}`);
    await fsp.mkdir(mnt);
    const loop = (await run('losetup', ['--find', '--show', '--offset', String(offset), disk])).stdout.trim();
    let before = { machineId: '', hostKey: '' };
    try {
      await run('mount', [loop, mnt]);
      try {
        await run('bash', [path.join(repoRoot(), 'test/e2e/stage-conventional.sh'), mnt, nodeRoot]);
        // the vendor's agent config, as on any device (docs/agent.md): server, keyring, health check, what survives
        await fsp.mkdir(path.join(mnt, 'etc/ibu/keyring'), { recursive: true });
        await fsp.copyFile(path.join(keys, 'signing.pub'), path.join(mnt, 'etc/ibu/keyring/signing.pub'));
        await fsp.writeFile(
          path.join(mnt, 'etc/ibu/agent.json'),
          JSON.stringify(
            {
              server: { url: 'http://10.0.2.100', deviceId: name, token },
              channel: 'stable',
              keyring: '/etc/ibu/keyring',
              checkpoint: 'fsfreeze',
              download: { maxRetryAfterSeconds: 5 },
              health: APPLIANCE_HEALTH,
              pollSeconds: 5,
              reboot: { command: ['systemctl', 'reboot'], forceCommand: ['reboot', '-f'], forceAfterSeconds: 90 },
              migration: [
                { path: '/root/.ssh', strategy: 'copy' },
                { path: '/home', strategy: 'copy' },
              ],
            },
            null,
            2,
          ),
          { mode: 0o600 },
        );
        const e2e = path.join(mnt, 'ibu-e2e');
        await fsp.mkdir(e2e, { recursive: true });
        await fsp.writeFile(path.join(e2e, 'conventional.sh'), CONVENTIONAL_SH);
        await fsp.writeFile(path.join(e2e, 'version'), `${version}\n`);
        if (o.nospace) await fsp.writeFile(path.join(e2e, 'nospace'), '');
        await fsp.writeFile(path.join(mnt, 'etc/systemd/system/ibu-e2e.service'), UNIT);
        await fsp.mkdir(path.join(mnt, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
        await fsp.symlink('/etc/systemd/system/ibu-e2e.service', path.join(mnt, 'etc/systemd/system/multi-user.target.wants/ibu-e2e.service'));
        // minutes under TCG on a loaded host, and nothing the story needs (udev settle, scrubs, timers)
        for (const u of ['ifupdown-pre.service', 'e2scrub_reap.service', 'e2scrub_all.timer', 'apt-daily.timer', 'apt-daily-upgrade.timer', 'fstrim.timer']) {
          await fsp.symlink('/dev/null', path.join(mnt, 'etc/systemd/system', u)).catch(() => {});
        }
        // the image's journal on the serial console too (the kernel command line of every entry update-grub writes)
        const grubDefault = path.join(mnt, 'etc/default/grub');
        await fsp.writeFile(
          grubDefault,
          (await fsp.readFile(grubDefault, 'utf8')).replace(/^GRUB_CMDLINE_LINUX="/m, 'GRUB_CMDLINE_LINUX="systemd.journald.forward_to_console=1 '),
        );
        // what the adoption must carry over: a local user with a password, a data disk in fstab; root's
        // SSH key (the vendor's list) so the test can log in to the adopted device
        await fsp.appendFile(path.join(mnt, 'etc/fstab'), 'LABEL=data /srv/data ext4 defaults,nofail,x-systemd.device-timeout=5s 0 2\n');
        await run('chroot', [mnt, 'useradd', '-m', '-u', '1000', '-p', '$6$e2e$adopted', 'alice']);
        await fsp.mkdir(path.join(mnt, 'root/.ssh'), { recursive: true, mode: 0o700 });
        await fsp.writeFile(path.join(mnt, 'root/.ssh/authorized_keys'), id.pub, { mode: 0o600 });
        // the machine's identity as it is now (the cached disk may not have made machine-id or host keys yet)
        if (!(await fsp.readFile(path.join(mnt, 'etc/machine-id'), 'utf8').catch(() => '')).trim()) {
          await fsp.writeFile(path.join(mnt, 'etc/machine-id'), (await run('systemd-id128', ['new'])).stdout.trim() + '\n');
        }
        if (!existsSync(path.join(mnt, 'etc/ssh/ssh_host_ed25519_key'))) await run('chroot', [mnt, 'ssh-keygen', '-A']);
        before = {
          machineId: (await fsp.readFile(path.join(mnt, 'etc/machine-id'), 'utf8')).trim(),
          hostKey: (await fsp.readFile(path.join(mnt, 'etc/ssh/ssh_host_ed25519_key.pub'), 'utf8')).split(' ')[1]!,
        };
      } finally {
        await run('umount', [mnt]);
      }
    } finally {
      await run('losetup', ['-d', loop]);
    }
    return { disk, root: new HostFs(disk, offset, work), before };
  }

  /** One QEMU run of a conventional machine through its own GRUB; a rescue shell counts as stuck (GRUB's menu does not: it has one). */
  async function start(name: string, fw: 'efi' | 'bios', disk: string, before: { hostKey: string }, nth: number, killOn?: RegExp): Promise<RunningDevice> {
    // the adopted device must show the conventional system's SSH host key: pinned for every port of 127.0.0.1
    const knownHosts = path.join(work, `${name}.known_hosts`);
    await fsp.writeFile(knownHosts, `[127.0.0.1]:* ssh-ed25519 ${before.hostKey}\n`);
    const dev = await RunningDevice.start({
      disk,
      logFile: path.join(work, `${name}-${nth}.log`),
      serverPort: server.port,
      id: { ...id, knownHosts },
      firmware: fw === 'efi' ? 'uefi' : 'bios',
      stuckOn: [/\(initramfs\)|can't access tty|Give root password for maintenance|Dropping to a shell/],
      killOn,
      timeoutMs: 2_400_000,
    });
    running.push(dev);
    return dev;
  }

  /** Waits for each pattern in order (each after the previous one's line). */
  async function expectInOrder(dev: RunningDevice, patterns: RegExp[], timeoutMs = 1_800_000): Promise<string[]> {
    const got: string[] = [];
    let from = 0;
    for (const re of patterns) {
      const line = await dev.waitFor(re, { from, timeoutMs }).catch((err: Error) => {
        throw new Error(`${err.message}\n--- serial tail:\n${dev.lines.slice(-60).join('\n')}`);
      });
      from = dev.lines.indexOf(line, from) + 1;
      got.push(line);
    }
    return got;
  }

  async function envOf(root: HostFs) {
    const dir = await fsp.mkdtemp(path.join(work, 'env-'));
    try {
      for (const f of ['grubenv', 'grubenv.bak']) await root.debugfs(`dump /boot/ibu/${f} ${path.join(dir, f)}`);
      return await new GrubBootloader({ dir }).read();
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  /** From adopt exit 0 to the appliance's commit, through Debian's GRUB and the appliance's confirm unit. */
  const ADOPTED = (v: string) => {
    const e = v.replace('.', '\\.');
    return [
      new RegExp(`IBU-E2E adopt exit 0 in \\d+ s`),
      new RegExp(`ibu: default_image= try=${e} boot=${e} trial=1`),
      new RegExp(`mounted /images/${e}\\.img on /root via /dev/loop\\d+ \\(rw, trial=1\\)`),
      /acme-agent 1\.1 running/,
      new RegExp(`${e} passed its health checks and is now the committed default`),
    ];
  };

  /** Over SSH on the adopted device: the conventional system's identity, accounts, network file and data disk, on the trixie image. */
  async function checkMigrated(dev: RunningDevice, v: string, before: { machineId: string; hostKey: string }): Promise<void> {
    const look = await dev.ssh(LOOK);
    console.log(`adopted device:\n${look}`);
    assert.match(look, new RegExp(`^host=bookworm-conventional mid=${before.machineId} key=${before.hostKey.replace(/[+/]/g, '\\$&')}$`, 'm'), look);
    assert.match(look, /^alice:\$6\$e2e\$adopted$/m, 'the password hash');
    assert.match(look, /^alice:x:1000:1000:/m);
    assert.match(look, /^LABEL=data \/srv\/data ext4/m, 'the data disk');
    assert.match(look, /address 10\.0\.2\.15\/24/, 'the network configuration file');
    assert.match(look, new RegExp(`^/dev/loop\\d+ rw,`, 'm'), 'the image is the root, read-write');
    assert.match(look, /^\/host$/m);
    assert.match(look, /^VERSION_CODENAME=trixie$/m);
    assert.match(look, /^6\.12\.\S+-amd64$/m, 'trixie kernel');
    assert.match(look, /^acme=active$/m);
    assert.match(await dev.ssh('upgradectl status --json'), new RegExp(`"committed":"${v.replace('.', '\\.')}"`));
  }

  /** After power-off: committed in the adoption env, the conventional system still the last resort; the server's record. */
  async function checkCommitted(name: string, root: HostFs, v: string): Promise<void> {
    const st = await envOf(root);
    assert.deepEqual([st.defaultImage, st.tryImage, st.adopted ?? null], [v, null, v], 'committed; the conventional system stays the last resort');
    assert.ok(await root.readFile('/etc/grub.d/05_ibu'), 'the grub.d script is installed');
    assert.match(
      (await root.readFile('/boot/grub/grub.cfg'))!.toString(),
      /### ibu: boot \/images[\s\S]*set ibu_root_mode=rw[\s\S]*menuentry 'Debian GNU\/Linux'/,
      'update-grub put it before the Debian entries',
    );
    const rec = await server.deviceRecord(name);
    assert.deepEqual([rec.version, rec.committedVersion, rec.state], [v, v, 'committed']);
    const ev = server.events(name);
    const said = JSON.stringify(ev);
    assert.ok(
      ev.some((e) => e.type === 'apply-started' && e.from === '0-conventional' && e.to === v),
      said,
    );
    assert.ok(
      ev.some((e) => e.type === 'upgrade-succeeded' && e.to === v),
      said,
    );
  }

  test("(d)+(a) UEFI (OVMF), GPT: a full disk -> NO_SPACE, nothing touched; cleaned up, adopt 2.0, trial through Debian's GRUB, commit", async () => {
    const name = 'adopt-efi';
    const v = '2.0';
    const { disk, root, before } = await machine(name, 'efi', v, { nospace: true });
    const dev = await start(name, 'efi', disk, before, 1);
    const lines = await expectInOrder(dev, [
      /IBU-E2E CONVENTIONAL up kernel=6\.1\./,
      /IBU-E2E nospace exit 6 touched=no "code":"NO_SPACE"/,
      /IBU-E2E nospace says: .*missing/,
      /preflight passed: UEFI, grub-efi-amd64 2\.06/,
      ...ADOPTED(v),
    ]);
    console.log(`${name}: ${lines.filter((l) => /IBU-E2E (nospace|adopt)/.test(l)).join('\n')}`);
    await checkMigrated(dev, v, before);
    await dev.powerOff();
    await checkCommitted(name, root, v);
  });

  test('(e)+(b) BIOS (SeaBIOS), MBR: power cut during adoption (entering the download): the conventional system boots, adopt runs again, commit', async () => {
    const name = 'adopt-bios';
    const v = '2.0';
    const { disk, root, before } = await machine(name, 'bios', v);
    const cut = await (await start(name, 'bios', disk, before, 1, /crash-point \d+ step download/)).done;
    assert.ok(cut.killedOn, `no power cut: the download step never started\n${cut.log.split('\n').slice(-40).join('\n')}`);
    const dev = await start(name, 'bios', disk, before, 2);
    const lines = await expectInOrder(dev, [/IBU-E2E CONVENTIONAL up kernel=6\.1\./, /preflight passed: BIOS, grub-pc 2\.06/, ...ADOPTED(v)]);
    console.log(`${name}: ${lines.filter((l) => /IBU-E2E adopt/.test(l)).join('\n')}`);
    await checkMigrated(dev, v, before);
    await dev.powerOff();
    await checkCommitted(name, root, v);
  });

  test('(c) UEFI: the adopted image (3.0, its acme-agent broken) fails its health check: back on the conventional system, nothing lost, the server sees why', async () => {
    const name = 'adopt-unhealthy';
    const v = '3.0';
    await publish(v);
    const { disk, root, before } = await machine(name, 'efi', v);
    const dev = await start(name, 'efi', disk, before, 1);
    await expectInOrder(dev, [
      /IBU-E2E adopt exit 0/,
      /ibu: default_image= try=3\.0 boot=3\.0 trial=1/,
      /mounted \/images\/3\.0\.img on \/root/,
      /health checks failed on 3\.0: /,
      /upgradectl: rebooting \(\w[\w-]*\): |[Rr]ebooting/,
      /ibu: adopted machine, no image to boot/,
      /IBU-E2E CONVENTIONAL up kernel=6\.1\./,
      /IBU-E2E CONVENTIONAL back/,
    ]);
    const res = await dev.done;
    assert.equal(res.timedOut || res.stuck !== null, false, 'powered off by itself');
    const st = await envOf(root);
    assert.deepEqual([st.defaultImage, st.tryImage, st.adopted ?? null], [null, null, '3.0']);
    const rec = await server.deviceRecord(name);
    assert.equal(rec.lastErrorCode, 'HEALTH_CHECK_FAILED');
    assert.ok(
      server.events(name).some((e) => e.type === 'upgrade-failed' && e.errorCode === 'HEALTH_CHECK_FAILED'),
      JSON.stringify(server.events(name)),
    );
    // nothing lost: the conventional system's own files, and the image it tried, are all there
    assert.ok(await root.readFile('/home/alice/.bashrc'), "alice's home");
    assert.ok(await root.readFile('/etc/ibu/agent.json'), 'the agent config');
    assert.match((await root.readFile('/etc/machine-id'))!.toString(), new RegExp(before.machineId));
    assert.ok(await root.readFile('/boot/grub/grub.cfg'));
  });
});
