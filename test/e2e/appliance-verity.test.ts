// test-needs: root (ibu build runs mmdebstrap --mode=root; loop mounts; QEMU). scripts/test-files.sh reads this line.
/**
 * Issue #22 item 4 on the real appliance, as ONE device's story in one QEMU run (TCG boots are the
 * time): the read-only variant of examples/appliance (appliance-readonly.ts: `readonly: true`, a
 * vendor package whose /etc changes every release), every release published `--verity`.
 *  1. 1.0 boots from the factory (no verity record yet: unverified, root `ro`): root is the loop
 *     device, read-only (a write to /usr fails), /etc and /var are overlays on the host. The factory
 *     put the device's own files (agent config, keyring, the operator's SSH key) in 1.0's /etc
 *     layer on the host. The operator makes the device its own: hostname, root's password, a user,
 *     a network setting, the vendor's acme.conf, and the vendor's policy.conf (a conflict to come).
 *  2. 1.0 -> 2.0: the apply is held until 2.0 is prepared, then one more edit is made (merged, as
 *     the facts are read at apply), then the timers apply; the /etc merge builds 2.0's layer; the
 *     trial boots 2.0 through dm-verity (/dev/mapper/ibu-root over the loop device, the root hash the
 *     agent recorded from the signed manifest), the health check passes, commit. /etc merged three
 *     ways: device edits kept, the untouched vendor file takes the new default, the conflict on
 *     policy.conf goes to the vendor by the config's rule (the device's copy saved aside) and is
 *     reported to the server, the new system user from 2.0 joins the device's user, machine-id and
 *     SSH host keys kept (ssh pins the host key).
 *  3. 2.0 -> 3.0 with rot: once 3.0 is prepared (its sha256 and verity tree checked), one byte of
 *     /usr/bin/acme-agent is flipped in /host/images/3.0.img. At boot nothing notices (the initramfs
 *     reads back only the kernel and initrd through verity); at run time exec of acme-agent reads
 *     the block, dm-verity fails it with EIO, the service fails, the health check fails, the agent
 *     falls back to the committed 2.0 and the server sees `upgrade-failed`.
 *  4. 2.0 -> 4.0: the second merge (new vendor defaults, a second conflict, a second new system
 *     user, the device's users and identity kept); committed.
 * The serial log gives the boot times with and without verity (docs/benchmarks.md).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { e2eUnavailable, repoRoot, FleetServer, ibu, missingInOrder, timeline } from './harness.js';
import { applianceReleases, deviceAgentConfig, makeApplianceDisk, TIMER_DROPINS, type Appliance, type ApplianceVersion } from './appliance.js';
import { readonlyApplianceSpec } from './appliance-readonly.js';
import { closeApplianceStory, openApplianceStory } from './appliance-story.js';
import { RunningDevice, type SshIdentity } from './appliance-device.js';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');

interface Published {
  image: string;
  rootHash: string;
  hashOffset: number;
  treeBytes: number;
}

/**
 * Per boot in the serial log: GRUB's line for the image, the initramfs (start -> image mounted)
 * and multi-user.target, in QEMU seconds (for docs/benchmarks.md; never asserted on).
 */
function bootSpans(log: string): { image: string; verity: boolean; initramfs: number | null; toMultiUser: number | null }[] {
  const out: { image: string; verity: boolean; initramfs: number | null; toMultiUser: number | null }[] = [];
  let cur: { image: string; verity: boolean; t0: number; init: number | null; initEnd: number | null } | null = null;
  for (const line of log.split('\n')) {
    const t = /^\[\s*([\d.]+)\]/.exec(line);
    if (!t) continue;
    const at = Number(t[1]);
    const g = /ibu: default_image=\S* try=\S* boot=(\S+)/.exec(line);
    if (g) {
      cur = { image: g[1]!, verity: false, t0: at, init: null, initEnd: null };
      continue;
    }
    if (!cur) continue;
    if (/ibu-initramfs .* starting/.test(line)) cur.init = at;
    if (/ibu-initramfs .* dm-verity: .* verified by root hash/.test(line)) cur.verity = true;
    if (/ibu-initramfs .* mounted \//.test(line)) cur.initEnd = at;
    if (/Reached target multi-user\.target/.test(line)) {
      const r = (x: number | null, y: number | null) => (x === null || y === null ? null : Math.round((y - x) * 10) / 10);
      out.push({ image: cur.image, verity: cur.verity, initramfs: r(cur.init, cur.initEnd), toMultiUser: r(cur.t0, at) });
      cur = null;
    }
  }
  return out;
}

describe(
  'a verified, read-only Debian appliance: dm-verity root, /etc merged three ways over two upgrades, rot on disk caught and survived',
  { skip: unavailable ?? false },
  () => {
    let work = '';
    let app: Appliance;
    let server: FleetServer;
    let keys = '';
    let store = '';
    let id: SshIdentity;
    let dev: RunningDevice | null = null;
    const published: Partial<Record<ApplianceVersion, Published>> = {};

    /** Publishes a copy of the release with its dm-verity tree appended (publish --verity changes the file: the cache stays untouched). */
    const publish = async (v: ApplianceVersion): Promise<Published> => {
      const image = path.join(work, 'published', `${v}.img`);
      await fsp.mkdir(path.dirname(image), { recursive: true });
      await run('cp', ['--sparse=always', app.images[v], image]);
      const r = await ibu(
        'release',
        'publish',
        '--image',
        image,
        '--version',
        v,
        '--store',
        store,
        '--key',
        path.join(keys, 'signing.key'),
        '--channel',
        'stable',
        '--verity',
        '--json',
      );
      const verity = (JSON.parse(r.stdout) as { verity: Omit<Published, 'image'> }).verity;
      published[v] = { image, ...verity };
      console.log(`published ${v} --verity: tree ${verity.treeBytes} bytes at ${verity.hashOffset}, root hash ${verity.rootHash}`);
      return published[v]!;
    };

    before(async () => {
      ({ server, id } = await openApplianceStory({
        prefix: 'ibu-e2e-appliance-verity-',
        releases: async (w) => applianceReleases({ specDir: await readonlyApplianceSpec(path.join(w, 'spec-readonly')) }),
        publish: async (s) => {
          ({ work, app, keys, store } = s);
          await publish('1.0');
        },
      }));
    });
    after(() => closeApplianceStory({ dev, server, work }));

    const STATE =
      'echo "state: $(cat /etc/machine-id) $(hostname) $(grep ^root: /etc/shadow | cut -d: -f2) $(sha256sum /etc/ssh/ssh_host_ed25519_key.pub | cut -c1-16)"';
    const ROOT = 'findmnt -no SOURCE,FSTYPE,OPTIONS /; findmnt -no SOURCE,FSTYPE,OPTIONS /etc; findmnt -no SOURCE,FSTYPE,OPTIONS /var';
    /** The root refuses writes, /etc and /var take them (the state lives on the host). */
    const WRITES =
      'touch /usr/ibu-e2e 2>&1 | sed "s/^/usrwrite: /"; date > /etc/ibu-e2e-w && echo etcwrite: ok; date > /var/lib/ibu-e2e-w && echo varwrite: ok';

    const assertReadonly = (out: string, how: RegExp): void => {
      assert.match(out, how, out);
      assert.match(out, /^overlay overlay rw,.*upperdir=\/host\/images\/\.ibu\/etc\/[\d.]+\/upper/m, `/etc is the overlay on the host: ${out}`);
      assert.match(out, /^overlay overlay rw,.*upperdir=\/host\/images\/\.ibu\/var\/upper/m, `/var is the overlay on the host: ${out}`);
      assert.match(out, /usrwrite: .*Read-only file system/, `a write to /usr fails: ${out}`);
      assert.match(out, /^etcwrite: ok$/m);
      assert.match(out, /^varwrite: ok$/m);
    };

    const cat = (f: string) => `echo "== ${f}"; cat ${f} 2>&1`;
    const section = (out: string, f: string): string => out.split(`== ${f}\n`)[1]?.split('\n== ')[0] ?? '';

    test('1.0 (ro) -> 2.0 (verity, /etc merged) -> 3.0 rotten on disk (EIO, health check fails, back to 2.0) -> 4.0 (second merge)', async () => {
      const name = 'appliance-ro-1';
      const token = await server.enroll(name);
      const agent = {
        ...(deviceAgentConfig(name, token) as Record<string, unknown>),
        // an operator at work holds the apply back (prepare runs); /run: gone at the next boot
        inhibitors: [{ name: 'operator at work', lockFile: '/run/hold-upgrade' }],
        // a read-only appliance keeps its state in /etc and /var: no migration list, the merge's rules instead
        migration: [],
        etc: { rules: [{ path: 'acme/policy.conf', rule: 'vendor' }] },
      };
      const files: Record<string, string> = {
        '/etc/ibu/agent.json': JSON.stringify(agent, null, 2) + '\n',
        '/etc/ibu/keyring/signing.pub': await fsp.readFile(path.join(keys, 'signing.pub'), 'utf8'),
        // /root is in the read-only image: the operator's key lives in /etc
        '/etc/ssh/sshd_config.d/ibu-e2e.conf': 'AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u\n',
        '/etc/ssh/authorized_keys/root': id.pub,
        ...TIMER_DROPINS,
      };
      const { disk, host } = await makeApplianceDisk(app, { work, name, files, readonly: { image: published['1.0']!.image }, hostMiB: 5120 });
      // Every reboot is a power cycle (QEMU -no-reboot, restarted on the same disk and NVRAM): twice the
      // warm reset into the 2.0 trial hung under TCG, once in GRUB after its welcome, once in OVMF before
      // any output (CPU busy; the same disk started cold boots on). A GRUB silent for 3 min after its
      // welcome is power-cycled too. docs/boot.md, "The verified read-only appliance".
      dev = await RunningDevice.start({
        disk,
        logFile: path.join(work, `${name}.log`),
        serverPort: server.port,
        id,
        timeoutMs: 3_600_000,
        powerCycle: true,
        powerCycleOnGrubHangMs: 180_000,
      });
      const d = dev;
      await d.waitFor(/Reached target .*Multi-User System|Reached target multi-user\.target/);

      // 1. the factory image: read-only root (no verity record yet), state on the host
      const look = await d.ssh(
        `${ROOT}; ${WRITES}; cat /proc/cmdline; echo "failed: $(systemctl --failed --no-legend | wc -l)"; systemctl --failed --no-legend`,
      );
      assertReadonly(look, /^\/dev\/loop\d+ ext4 ro,/m);
      assert.match(look, /loop=\/images\/1\.0\.img/, look);
      assert.match(look, /^failed: 0$/m, `no failed unit on a read-only root: ${look}`);
      const made = await d.ssh(
        [
          'set -e',
          'echo box-ro-42 > /etc/hostname; hostname box-ro-42',
          "echo 'root:e2e-Secret-1' | chpasswd",
          'mkdir -p /var/home; useradd -m -d /var/home/fieldtech -s /bin/bash fieldtech',
          "printf 'Domains=e2e.lab\\n' >> /etc/systemd/network/20-wired.network",
          "printf 'site = e2e-lab\\n' >> /etc/acme/acme.conf",
          "printf 'upload = https://mirror.e2e.lab\\n' >> /etc/acme/policy.conf",
          'touch /run/hold-upgrade',
          STATE,
        ].join('\n'),
      );
      const state = /state: (\S+) (\S+) (\S+) (\S+)/.exec(made);
      assert.ok(state, made);
      assert.match(state[1]!, /^[0-9a-f]{32}$/, 'machine-id made at first boot, in the /etc layer');
      const stateRe = new RegExp(`state: ${state[1]} box-ro-42 ${state[3]!.replace(/[$.]/g, '\\$&')} ${state[4]}`);

      // 2. 1.0 -> 2.0: prepared under the hold, one more edit, then apply and the verified trial
      const p2 = await publish('2.0');
      let mark = d.mark();
      await d.waitFor(/2\.0 is prepared/, { from: 0, timeoutMs: 2_400_000 });
      await d.ssh("printf 'after-prepare = kept\\n' >> /etc/acme/acme.conf; rm /run/hold-upgrade");
      await server.waitForRecord(name, (r) => r.committedVersion === '2.0' && r.state === 'committed', 2_400_000);
      const on2 = await d.ssh(
        [
          STATE,
          ROOT,
          WRITES,
          'cat /proc/cmdline',
          'veritysetup status ibu-root',
          'cat /host/images/.ibu/verity/2.0',
          'acme-agent --version',
          'getent passwd fieldtech acme-telemetry',
          cat('/etc/acme/acme.conf'),
          cat('/etc/acme/tuning.conf'),
          cat('/etc/acme/policy.conf'),
          cat('/host/images/.ibu/etc/2.0/aside/acme/policy.conf'),
          cat('/etc/systemd/network/20-wired.network'),
          'upgradectl status --json',
        ].join('; '),
      );
      assert.match(on2, stateRe, `machine-id, hostname, root's password, SSH host key kept: ${on2}`);
      assertReadonly(on2, /^\/dev\/(mapper\/ibu-root|dm-0) ext4 ro,/m);
      assert.match(on2, /loop=\/images\/2\.0\.img/);
      assert.match(on2, new RegExp(`root hash:\\s+${p2.rootHash}`), `dm-verity opened with the signed root hash: ${on2}`);
      assert.match(on2, /status:\s+verified/, on2);
      assert.match(on2, new RegExp(`^${p2.rootHash} ${p2.hashOffset}$`, 'm'), 'the record the agent wrote');
      assert.match(on2, /acme-agent 1\.1/);
      assert.match(on2, /^fieldtech:x:\d+:\d+:/m, "the device's user kept");
      assert.match(on2, /^acme-telemetry:x:\d+:\d+:/m, "2.0's new system user");
      assert.match(section(on2, '/etc/acme/acme.conf'), /site = e2e-lab\nafter-prepare = kept/, 'device edits kept, one made after prepare');
      assert.match(section(on2, '/etc/acme/tuning.conf'), /acme-agent 1\.1 tuning/, 'untouched vendor file: the new default');
      assert.match(
        section(on2, '/etc/acme/policy.conf'),
        /^# acme-agent 1\.1 policy \(vendor default\)\nupload = https:\/\/acme\.example\/v1\.1$/,
        'conflict: vendor wins',
      );
      assert.match(section(on2, '/host/images/.ibu/etc/2.0/aside/acme/policy.conf'), /mirror\.e2e\.lab/, "the device's losing copy saved aside");
      assert.match(section(on2, '/etc/systemd/network/20-wired.network'), /Domains=e2e\.lab/);
      assert.match(on2, /"running":"2\.0","committed":"2\.0"/);
      const conflicts = () => server.events(name).filter((e) => e.type === 'etc-conflict');
      assert.equal(conflicts().length, 1, JSON.stringify(server.events(name)));
      assert.equal(conflicts()[0]!.errorCode, 'ETC_CONFLICT');
      console.log(`${name}: 2.0 committed, verified root, /etc merged (${mark} serial lines before)`);

      // 3. 2.0 -> 3.0, rotten on disk after its checks: the block of /usr/bin/acme-agent, one byte
      // the operator's next changes (a second conflict, a second user), and the hold before 3.0 exists
      await d.ssh("useradd -M -s /bin/bash svc-local; printf 'upload = https://mirror2.e2e.lab\\n' >> /etc/acme/policy.conf; touch /run/hold-upgrade");
      mark = d.mark();
      const p3 = await publish('3.0');
      const blk = Number((await run('debugfs', ['-R', 'bmap /usr/bin/acme-agent 0', p3.image])).stdout.trim());
      assert.ok(blk > 0 && blk * 4096 < p3.hashOffset, `acme-agent's block ${blk}`);
      const off = blk * 4096 + 40;
      await d.waitFor(/3\.0 is prepared/, { from: mark, timeoutMs: 2_400_000 });
      const F = '/host/images/3.0.img';
      const flipped = await d.ssh(
        `b=$(dd if=${F} bs=1 skip=${off} count=1 2>/dev/null | od -An -tu1 | tr -d ' '); ` +
          `printf "$(printf '\\\\%03o' $((b ^ 255)))" | dd of=${F} bs=1 seek=${off} count=1 conv=notrunc 2>/dev/null; sync; ` +
          `echo "flipped $b -> $(dd if=${F} bs=1 skip=${off} count=1 2>/dev/null | od -An -tu1 | tr -d ' ')"; rm /run/hold-upgrade`,
      );
      assert.match(flipped, /flipped (\d+) -> (\d+)/, flipped);
      console.log(`${name}: ${flipped.trim()} at byte ${off} of 3.0.img (block ${blk} of /usr/bin/acme-agent)`);
      await server.waitForRecord(name, () => server.events(name).some((e) => e.type === 'upgrade-failed' && e.to === '2.0'), 2_400_000);
      const back = await d.ssh('cat /proc/cmdline; findmnt -no SOURCE /; acme-agent --version; upgradectl status --json');
      assert.match(back, /loop=\/images\/2\.0\.img/, back);
      assert.match(back, /"running":"2\.0","committed":"2\.0"/, back);
      const rot = d.lines.slice(mark).join('\n');
      assert.match(rot, /verity.*data block \d+ is corrupted/i, 'the kernel names the rotten block');
      assert.match(rot, /acme-agent.*(Input\/output error|EIO)|(Input\/output error|EIO).*acme-agent/, 'exec of acme-agent failed with EIO');

      // 4. 2.0 -> 4.0: the second merge
      await publish('4.0');
      await server.waitForRecord(name, (r) => r.committedVersion === '4.0' && r.state === 'committed', 2_400_000);
      const on4 = await d.ssh(
        [
          STATE,
          ROOT,
          WRITES,
          'veritysetup status ibu-root',
          'acme-agent --version',
          'getent passwd fieldtech svc-local acme-telemetry acme-backup',
          cat('/etc/acme/acme.conf'),
          cat('/etc/acme/tuning.conf'),
          cat('/etc/acme/policy.conf'),
          cat('/host/images/.ibu/etc/4.0/aside/acme/policy.conf'),
          'upgradectl status --json',
        ].join('; '),
      );
      assert.match(on4, stateRe, `identity kept over the second upgrade: ${on4}`);
      assertReadonly(on4, /^\/dev\/(mapper\/ibu-root|dm-0) ext4 ro,/m);
      assert.match(on4, new RegExp(`root hash:\\s+${published['4.0']!.rootHash}`));
      assert.match(on4, /acme-agent 1\.3/);
      for (const u of ['fieldtech', 'svc-local', 'acme-telemetry', 'acme-backup']) assert.match(on4, new RegExp(`^${u}:x:\\d+:\\d+:`, 'm'), u);
      assert.match(section(on4, '/etc/acme/acme.conf'), /site = e2e-lab\nafter-prepare = kept/);
      assert.match(section(on4, '/etc/acme/tuning.conf'), /acme-agent 1\.3 tuning/);
      assert.match(section(on4, '/etc/acme/policy.conf'), /acme\.example\/v1\.3/);
      assert.match(section(on4, '/host/images/.ibu/etc/4.0/aside/acme/policy.conf'), /mirror2\.e2e\.lab/);
      assert.match(on4, /"running":"4\.0","committed":"4\.0"/);
      // one report per apply: 2.0, 3.0 (its trial failed, the report stands) and 4.0
      assert.equal(conflicts().length, 3, JSON.stringify(conflicts()));
      const upgrades = server
        .events(name)
        .filter((e) => ['apply-started', 'upgrade-succeeded', 'upgrade-failed'].includes(e.type))
        .map((e) => [e.type, e.from, e.to]);
      assert.deepEqual(upgrades, [
        ['apply-started', '1.0', '2.0'],
        ['upgrade-succeeded', '1.0', '2.0'],
        ['apply-started', '2.0', '3.0'],
        ['upgrade-failed', '3.0', '2.0'],
        ['apply-started', '2.0', '4.0'],
        ['upgrade-succeeded', '2.0', '4.0'],
      ]);

      const res = await d.powerOff();
      dev = null;
      console.log(`${name}: ${timeline(res.log)}`);
      console.log(`${name}: ${res.powerCycles} power cycles (every reset, and any GRUB hang: ${res.log.match(/^# power cycle \d+: GRUB/gm)?.length ?? 0})`);
      for (const b of bootSpans(res.log))
        console.log(`${name} boot ${b.image} ${b.verity ? 'verity' : 'no verity'}: initramfs ${b.initramfs} s, GRUB -> multi-user ${b.toMultiUser} s`);
      const miss = missingInOrder(res.log, [
        /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
        /ibu-initramfs .* read-only image \/images\/1\.0\.img: \/etc and \/var are overlays on the host/,
        /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
        new RegExp(`ibu-initramfs .* dm-verity: /images/2\\.0\\.img verified by root hash ${p2.rootHash}`),
        /ibu-initramfs .* mounted \/images\/2\.0\.img on \/root via \/dev\/mapper\/ibu-root/,
        /ibu: default_image=2\.0 try=3\.0 boot=3\.0 trial=1/,
        /ibu-initramfs .* mounted \/images\/3\.0\.img on \/root via \/dev\/mapper\/ibu-root/,
        /ibu: default_image=2\.0 try= boot=2\.0 trial=0/,
        /ibu: default_image=2\.0 try=4\.0 boot=4\.0 trial=1/,
        /reboot: Power down/,
      ]);
      assert.equal(miss, null, `${miss} (${res.logFile})`);
      const end = await host.bootState();
      assert.deepEqual([end.defaultImage, end.tryImage], ['4.0', null]);
    });
  },
);
