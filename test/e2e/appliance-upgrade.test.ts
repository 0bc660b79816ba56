// test-needs: root (ibu build runs mmdebstrap --mode=root; loop mounts; QEMU). scripts/test-files.sh reads this line.
/**
 * Issue #17 item 3 on the real appliance (examples/appliance built by `ibu build`, the agent from
 * its .deb, systemd), as ONE device's story (TCG boots are the time):
 *  - 1.0 boots from /images/1.0.img (GRUB loopback, Debian's initramfs-tools initrd with the ibu
 *    hook) to multi-user.target; machine-id and SSH host keys are made at this first boot. An
 *    operator logs in over SSH and makes the device its own: hostname, root's password, a new
 *    user, a network setting, the vendor's config file. An inhibitor file held the upgrade back
 *    until then; the operator removes it.
 *  (e) the timers check in and prepare 2.0: `ibu serve` builds the delta on demand (202, then the
 *      delta: about a hundred MB, since 2.0 brings a new kernel). A relay between guest and server
 *      counts the answer's bytes and the power is cut in the middle of the transfer. The device
 *      boots 1.0 again and the download resumes where it stopped (a 206 answer).
 *  (a) the apply timer applies 2.0 inside the maintenance window and reboots; GRUB boots 2.0 once;
 *      upgradectl-confirm.service runs the health check (`systemctl is-system-running --wait` and
 *      the vendor's `acme-agent --check`) and commits; the server records it.
 *  (b) 2.0 runs its own kernel (a new ABI: 6.12.117 -> 6.12.118, a new package name) with its own
 *      initrd and modules.
 *  (d) on 2.0, over SSH with the pinned host key: the same machine-id, hostname, root password
 *      hash, user, network file and vendor config; acme-agent 1.1 runs.
 *  (c) 3.0 is published: its acme-agent fails to start; the timers prepare and apply it, the
 *      trial's health check fails, the agent rolls back by itself to 2.0 and the server sees
 *      `upgrade-failed`.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { e2eUnavailable, repoRoot, FleetServer, ibu, missingInOrder, timeline } from './harness.js';
import { applianceReleases, deviceFiles, makeApplianceDisk, upgradeTimings, type Appliance, publishAppliance } from './appliance.js';
import { removeWorkDir } from './work-dir.js';
import { RunningDevice, ServerTap, sshIdentity, type SshIdentity } from './appliance-device.js';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');

describe(
  'the Debian appliance upgrades itself under systemd: timers, delta, trial, health check, commit; its own state kept; a broken release rolls back',
  { skip: unavailable ?? false },
  () => {
    let work = '';
    let app: Appliance;
    let server: FleetServer;
    let keys = '';
    let store = '';
    let id: SshIdentity;
    let dev: RunningDevice | null = null;
    let tap: ServerTap;

    const publish = (v: '1.0' | '2.0' | '3.0' | '4.0') => publishAppliance(app, v, store, keys);

    before(async () => {
      work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-e2e-appliance-'));
      const t0 = Date.now();
      app = await applianceReleases({ specDir: process.env.IBU_APPLIANCE_SPEC });
      console.log(`appliance releases ${app.built ? 'built' : 'from the cache'} in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${app.dir}`);
      keys = path.join(work, 'keys');
      await ibu('keys', 'generate', '--out', keys);
      store = path.join(work, 'store');
      await publish('1.0');
      await publish('2.0');
      server = await new FleetServer(store, path.join(work, 'server.log')).start();
      tap = await ServerTap.start(server.port);
      id = await sshIdentity(work);
    });

    after(async () => {
      if (dev) await dev.kill().catch(() => null);
      await tap?.close();
      await server?.stop();
      await removeWorkDir(work);
    });

    const STATE =
      'echo "state: $(cat /etc/machine-id) $(hostname) $(grep ^root: /etc/shadow | cut -d: -f2) $(sha256sum /etc/ssh/ssh_host_ed25519_key.pub | cut -c1-16)"';

    test('(e)+(a)+(b)+(d)+(c): 1.0 -> 2.0 (new kernel) by the timers across a power cut mid-download, its own state kept; 3.0 fails its health check and rolls back', async () => {
      const name = 'appliance-1';
      const token = await server.enroll(name);
      const { disk, host } = await makeApplianceDisk(app, {
        work,
        name,
        files: await deviceFiles({ name, token, keysDir: keys, sshPub: id.pub, hold: true }),
      });
      // Hang guards, not time limits: quiet, a prepare is ~1.5 min of TCG CPU; beside CI's other lane
      // (QEMU guests and delta builds on 2 cores) it was ~5 min, and run 2 is two upgrades and a rollback.
      const start = (run: string, timeoutMs?: number) =>
        RunningDevice.start({ disk, logFile: path.join(work, `${name}-${run}.log`), serverPort: tap.port, id, timeoutMs });
      // (e) the power will be cut 8 MiB into the delta's answer (held there; a retry is held too).
      // Armed from the start: the prepare timer may fetch while the operator is still at work.
      const cut = tap.cutWhen(/^GET \/v1\/deltas\/1\.0\/2\.0/, 8 << 20);
      dev = await start('1');
      const first = dev;
      await first.waitFor(/Reached target .*Multi-User System|Reached target multi-user\.target/);

      // The device as it came up: its root is the image file through a loop device, the host fs at
      // /host, no failed unit, the vendor service running. (Not `is-system-running --wait`: the
      // prepare timer's run, held mid-download below, keeps systemd's boot unfinished.) Then the
      // operator makes it its own; the upgrade is held back meanwhile.
      const look = await first.ssh(
        'findmnt -no SOURCE,OPTIONS /; findmnt -no SOURCE,TARGET /host; cat /proc/cmdline; uname -r; systemctl is-active acme-agent; echo "failed: $(systemctl --failed --no-legend | wc -l)"',
      );
      assert.match(look, /^\/dev\/loop\d+ rw,/m, look);
      assert.match(look, /^\/dev\/vda2 \/host$/m, look);
      assert.match(look, /boot=ibu .*loop=\/images\/1\.0\.img|loop=\/images\/1\.0\.img.*boot=ibu/, look);
      assert.match(look, /^active$/m, 'acme-agent runs');
      assert.match(look, /^failed: 0$/m, `no failed unit: ${look}`);
      const oldKernel = /^(6\.\S+-amd64)$/m.exec(look)?.[1];
      assert.ok(oldKernel, look);
      const before = await first.ssh(
        [
          'set -e',
          'echo box-e2e-42 > /etc/hostname; hostname box-e2e-42',
          "echo 'root:e2e-Secret-1' | chpasswd",
          'useradd -m -s /bin/bash fieldtech',
          "printf 'Domains=e2e.lab\\n' >> /etc/systemd/network/20-wired.network",
          "printf 'site = e2e-lab\\n' >> /etc/acme/acme.conf",
          STATE,
          'rm /root/hold-upgrade',
        ].join('\n'),
      );
      const state = /state: (\S+) (\S+) (\S+) (\S+)/.exec(before);
      assert.ok(state, before);
      assert.match(state[1]!, /^[0-9a-f]{32}$/, 'machine-id made at first boot');

      const hit = await Promise.race([
        cut,
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the delta download never reached 8 MiB')), 1_500_000).unref()),
      ]);
      // What the agent wrote of the partial file is on the disk, as the guest's own writeback (30 s)
      // would have put it there on a device whose download stalled before the power went.
      await first.ssh('sync');
      const r1 = await first.kill();
      console.log(`${name} run 1: ${timeline(r1.log)} | power cut ${hit.bytes} bytes into ${hit.request}`);
      // The variant the device was downloading (it names its encoders: ?encoders=…).
      const size = (await server.deltaSize('1.0', '2.0', /\?.*$/.exec(hit.request)?.[0])) ?? 0;
      console.log(`${name}: the 1.0 -> 2.0 delta is ${size} bytes; ${((100 * hit.bytes) / size).toFixed(1)} % had been sent at the cut`);
      assert.ok(hit.bytes < size, 'the cut came in the middle of the transfer');

      // boots 1.0 again; the timers resume the download, apply, the trial boots 2.0, confirm commits
      tap.release();
      dev = await start('2', 4_200_000);
      const d = dev;
      await server.waitForRecord(name, (r) => r.committedVersion === '2.0' && r.state === 'committed', 2_400_000);
      const running = await d.ssh(
        `${STATE}; cat /proc/cmdline; uname -r; ls /lib/modules; lsmod | grep -c . ; acme-agent --version; getent passwd fieldtech; ` +
          'cat /etc/systemd/network/20-wired.network /etc/acme/acme.conf; upgradectl status --json',
      );
      // (d) the device's own state survived (the SSH host key is pinned by known_hosts: ssh itself checked it)
      assert.match(running, new RegExp(`state: ${state[1]} box-e2e-42 ${state[3]!.replace(/[$.]/g, '\\$&')} ${state[4]}`));
      assert.match(running, /loop=\/images\/2\.0\.img/);
      // (b) 2.0's own kernel, a new ABI, with its modules (virtio-net is one: SSH works)
      const newKernel = /^(6\.\S+-amd64)$/m.exec(running)?.[1];
      assert.ok(newKernel && newKernel !== oldKernel, `2.0 runs a new kernel ABI: ${oldKernel} -> ${newKernel}`);
      assert.doesNotMatch(running, new RegExp(`^${oldKernel!.replace(/[.+]/g, '\\$&')}$`, 'm'), "1.0's modules are not in 2.0");
      assert.match(running, /acme-agent 1\.1/);
      assert.match(running, /^fieldtech:x:\d+:\d+:/m);
      assert.match(running, /Domains=e2e\.lab/);
      assert.match(running, /site = e2e-lab/);
      assert.match(running, /"running":"2\.0","committed":"2\.0"/);
      const statuses = await server.statusesFor('/v1/deltas/1.0/2.0');
      assert.ok(statuses.includes(202), `the server built the delta on demand: ${statuses}`);
      assert.ok(statuses.includes(206), `the download resumed where the power cut left it: ${statuses}`);
      const upgrade = () =>
        server
          .events(name)
          .filter((e) => ['apply-started', 'upgrade-succeeded', 'upgrade-failed'].includes(e.type))
          .map((e) => [e.type, e.from, e.to]);
      assert.deepEqual(upgrade(), [
        ['apply-started', '1.0', '2.0'],
        ['upgrade-succeeded', '1.0', '2.0'],
      ]);
      console.log(`${name}: (e), (a), (b) and (d) hold: committed on 2.0 (${oldKernel} -> ${newKernel}) after a power cut mid-download`);

      // (c) a release whose vendor service fails to start
      await publish('3.0');
      await server.waitForRecord(name, () => server.events(name).some((e) => e.type === 'upgrade-failed'), 2_400_000);
      const back = await d.ssh('cat /proc/cmdline; acme-agent --version; upgradectl status --json');
      assert.match(back, /loop=\/images\/2\.0\.img/);
      assert.match(back, /"running":"2\.0","committed":"2\.0"/);
      assert.deepEqual(upgrade().slice(2), [
        ['apply-started', '2.0', '3.0'],
        ['upgrade-failed', '3.0', '2.0'],
      ]);
      const res = await d.powerOff();
      console.log(`${name} run 2: ${timeline(res.log)}`);
      console.log(`${name} upgrade 1.0 -> 2.0, resumed after the cut (s): ${JSON.stringify(upgradeTimings(res.log, '1.0', '2.0', '1.1'))}`);
      const miss1 = missingInOrder(r1.log, [
        /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
        /ibu-initramfs .* starting \(initramfs-tools\): root=UUID=\S+ loop=\/images\/1\.0\.img \(rw\)/,
        /ibu-initramfs .* mounted \/images\/1\.0\.img on \/root via \/dev\/loop\d+/,
        /systemd\[1\]: systemd 257/,
        /acme-agent 1\.0 running/,
        /Reached target multi-user\.target/,
      ]);
      assert.equal(miss1, null, `${miss1} (${r1.logFile})`);
      const miss = missingInOrder(res.log, [
        /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
        /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
        /ibu: default_image=2\.0 try=3\.0 boot=3\.0 trial=1/,
        /acme-agent 1\.2: cannot start/,
        /ibu: default_image=2\.0 try= boot=2\.0 trial=0/,
        /reboot: Power down/,
      ]);
      assert.equal(miss, null, `${miss} (${res.logFile})`);
      const end = await host.bootState();
      assert.deepEqual([end.defaultImage, end.tryImage], ['2.0', null]);
      // The root is a loop device on a file of the host fs, so systemd-shutdown cannot unmount the
      // host fs: it syncs and powers off with the host's journal not checkpointed; the next mount
      // replays it. What is durable: e2fsck -fy finds nothing worse than the replay.
      await host.recoveredCopy();
    });
  },
);
