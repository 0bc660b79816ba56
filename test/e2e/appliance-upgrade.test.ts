// test-needs: root (ibu build runs mmdebstrap --mode=root; loop mounts; QEMU). scripts/test-files.sh reads this line.
/**
 * Issue #17 item 3 on the real appliance (examples/appliance built by `ibu build`, the agent from
 * its .deb, systemd), as ONE device's story in one QEMU run (TCG boots are the time):
 *  - 1.0 boots; an operator logs in over SSH and makes the device its own: hostname, root's
 *    password, a new user, a network setting, the vendor's config file; the device's machine-id
 *    and SSH host keys were made at its first boot. An inhibitor file held the upgrade back
 *    until then; the operator removes it.
 *  (a) the agent's timers check in and prepare 2.0 through a delta `ibu serve` builds on demand;
 *      the apply timer applies it inside the maintenance window and reboots; GRUB boots 2.0 once;
 *      upgradectl-confirm.service runs the health check (`systemctl is-system-running --wait` and
 *      the vendor's `acme-agent --check`) and commits; the server records it.
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
import { applianceReleases, deviceAgentConfig, makeApplianceDisk, TIMER_DROPINS, upgradeTimings, type Appliance } from './appliance.js';
import { RunningDevice, sshIdentity, type SshIdentity } from './appliance-device.js';

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

    const publish = (v: '1.0' | '2.0' | '3.0') =>
      ibu('release', 'publish', '--image', app.images[v], '--version', v, '--store', store, '--key', path.join(keys, 'signing.key'), '--channel', 'stable');

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
      id = await sshIdentity(work);
    });

    after(async () => {
      if (dev) await dev.kill().catch(() => null);
      await server?.stop();
      if (work && process.env.IBU_E2E_KEEP !== '1') await fsp.rm(work, { recursive: true, force: true });
      else if (work) console.log(`e2e work dir kept: ${work}`);
    });

    async function waitForRecord(name: string, ok: (r: Awaited<ReturnType<FleetServer['deviceRecord']>>) => boolean, timeoutMs: number) {
      const t0 = Date.now();
      for (;;) {
        const r = await server.deviceRecord(name);
        if (ok(r)) return r;
        if (Date.now() - t0 > timeoutMs) throw new Error(`server record of ${name} still ${JSON.stringify(r)}`);
        await new Promise((res) => setTimeout(res, 3000));
      }
    }

    test('(a)+(d)+(c): one device from 1.0 to 2.0 by its timers, its own state kept; 3.0 fails its health check and rolls back', async () => {
      const name = 'appliance-1';
      const token = await server.enroll(name);
      const { disk, host } = await makeApplianceDisk(app, {
        work,
        name,
        files: {
          '/etc/ibu/agent.json': JSON.stringify(deviceAgentConfig(name, token), null, 2) + '\n',
          '/etc/ibu/keyring/signing.pub': await fsp.readFile(path.join(keys, 'signing.pub'), 'utf8'),
          '/root/.ssh/authorized_keys': id.pub,
          '/root/hold-upgrade': 'the operator sets the device up first\n',
          ...TIMER_DROPINS,
        },
      });
      dev = await RunningDevice.start({ disk, logFile: path.join(work, `${name}.log`), serverPort: server.port, id });
      const d = dev;
      await d.waitFor(/Reached target .*Multi-User System/);

      // The operator makes the device its own (it is held back from upgrading meanwhile).
      const before = await d.ssh(
        [
          'set -e',
          'echo box-e2e-42 > /etc/hostname; hostname box-e2e-42',
          "echo 'root:e2e-Secret-1' | chpasswd",
          'useradd -m -s /bin/bash fieldtech',
          "printf 'Domains=e2e.lab\\n' >> /etc/systemd/network/20-wired.network",
          "printf 'site = e2e-lab\\n' >> /etc/acme/acme.conf",
          'echo "state: $(cat /etc/machine-id) $(hostname) $(grep ^root: /etc/shadow | cut -d: -f2) $(sha256sum /etc/ssh/ssh_host_ed25519_key.pub | cut -c1-16)"',
          'rm /root/hold-upgrade',
        ].join('\n'),
      );
      const state = /state: (\S+) (\S+) (\S+) (\S+)/.exec(before);
      assert.ok(state, before);
      assert.match(state[1]!, /^[0-9a-f]{32}$/, 'machine-id made at first boot');

      // (a) the timers do the rest: prepare, apply in the window, reboot, trial, confirm, commit
      await waitForRecord(name, (r) => r.committedVersion === '2.0' && r.state === 'committed', 1_500_000);
      const running = await d.ssh(
        'echo "state: $(cat /etc/machine-id) $(hostname) $(grep ^root: /etc/shadow | cut -d: -f2) $(sha256sum /etc/ssh/ssh_host_ed25519_key.pub | cut -c1-16)"; ' +
          'cat /proc/cmdline; acme-agent --version; getent passwd fieldtech; cat /etc/systemd/network/20-wired.network /etc/acme/acme.conf; upgradectl status --json',
      );
      // (d) the device's own state survived (the SSH host key is pinned by known_hosts: ssh itself checked it)
      assert.match(running, new RegExp(`state: ${state[1]} box-e2e-42 ${state[3]!.replace(/[$.]/g, '\\$&')} ${state[4]}`));
      assert.match(running, /loop=\/images\/2\.0\.img/);
      assert.match(running, /acme-agent 1\.1/);
      assert.match(running, /^fieldtech:x:\d+:\d+:/m);
      assert.match(running, /Domains=e2e\.lab/);
      assert.match(running, /site = e2e-lab/);
      assert.match(running, /"running":"2\.0","committed":"2\.0"/);
      const st = await host.bootState().catch(() => null); // read while the guest runs: informational
      console.log(`boot state on the disk while 2.0 runs: ${JSON.stringify(st && { default: st.defaultImage, try: st.tryImage })}`);
      assert.deepEqual(
        server.events(name).map((e) => [e.type, e.from, e.to]),
        [
          ['apply-started', '1.0', '2.0'],
          ['upgrade-succeeded', '1.0', '2.0'],
        ],
      );
      assert.ok((await server.statusesFor('/v1/deltas/1.0/2.0')).includes(200), 'the delta was served');
      console.log(`${name}: (a) and (d) hold: committed on 2.0 by the timers, the device's own state kept`);

      // (c) a release whose vendor service fails to start
      await publish('3.0');
      await waitForRecord(name, () => server.events(name).some((e) => e.type === 'upgrade-failed'), 1_500_000);
      const back = await d.ssh('cat /proc/cmdline; acme-agent --version; upgradectl status --json');
      assert.match(back, /loop=\/images\/2\.0\.img/);
      assert.match(back, /"running":"2\.0","committed":"2\.0"/);
      assert.deepEqual(
        server
          .events(name)
          .slice(2)
          .map((e) => [e.type, e.from, e.to]),
        [
          ['apply-started', '2.0', '3.0'],
          ['upgrade-failed', '3.0', '2.0'],
        ],
      );
      const res = await d.powerOff();
      console.log(`${name}: ${timeline(res.log)}`);
      console.log(`${name} upgrade 1.0 -> 2.0 (s): ${JSON.stringify(upgradeTimings(res.log, '1.0', '2.0', '1.1'))}`);
      const miss = missingInOrder(res.log, [
        /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
        /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
        /ibu: default_image=2\.0 try=3\.0 boot=3\.0 trial=1/,
        /acme-agent 1\.2: cannot start/,
        /ibu: default_image=2\.0 try= boot=2\.0 trial=0/,
      ]);
      assert.equal(miss, null, `${miss} (${res.logFile})`);
      const end = await host.bootState();
      assert.deepEqual([end.defaultImage, end.tryImage], ['2.0', null]);
    });
  },
);
