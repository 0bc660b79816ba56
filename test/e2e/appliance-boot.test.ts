// test-needs: root (ibu build runs mmdebstrap --mode=root; loop mounts; QEMU). scripts/test-files.sh reads this line.
/**
 * The real appliance boots: release 1.0 of examples/appliance, built by `ibu build` (Debian 13,
 * systemd, Debian's kernel and its initramfs-tools initrd with the ibu hook), installed as
 * /images/1.0.img on a host partition, booted by GRUB `loopback` (assets/grub/10_ibu) and the
 * initrd's `boot=ibu loop=` script to multi-user.target under systemd, in QEMU (TCG, OVMF).
 * An operator logs in over SSH (host keys made at this first boot), looks around, and powers the
 * device off: systemd shuts down and the host fs is consistent once its journal is replayed.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { e2eUnavailable, missingInOrder, repoRoot, timeline } from './harness.js';
import { applianceReleases, makeApplianceDisk, type Appliance } from './appliance.js';
import { RunningDevice, sshIdentity } from './appliance-device.js';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');

describe('the Debian appliance built by ibu build boots from its image file under systemd', { skip: unavailable ?? false }, () => {
  let work = '';
  let app: Appliance;

  before(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-e2e-appliance-boot-'));
    const t0 = Date.now();
    app = await applianceReleases({ specDir: process.env.IBU_APPLIANCE_SPEC });
    console.log(`appliance releases ${app.built ? 'built' : 'from the cache'} in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${app.dir}`);
  });

  after(async () => {
    if (work && process.env.IBU_E2E_KEEP !== '1') await fsp.rm(work, { recursive: true, force: true });
    else if (work) console.log(`e2e work dir kept: ${work}`);
  });

  test('release 1.0 reaches multi-user.target: loop root rw, host at /host, machine-id and SSH host keys made, the vendor service up', async () => {
    const id = await sshIdentity(work);
    const { disk, host } = await makeApplianceDisk(app, { work, name: 'boot', files: { '/root/.ssh/authorized_keys': id.pub } });
    // no server in this test: the guestfwd goes to a closed port
    const dev = await RunningDevice.start({ disk, logFile: path.join(work, 'boot.log'), serverPort: 9, id, timeoutMs: 1_200_000 });
    try {
      await dev.waitFor(/Reached target multi-user\.target/);
      const out = await dev.ssh(
        'findmnt -no SOURCE,OPTIONS /; findmnt -no SOURCE,TARGET /host; cat /proc/cmdline; echo "machine-id $(cat /etc/machine-id)"; ' +
          'ls /etc/ssh/ssh_host_ed25519_key.pub; systemctl is-active acme-agent; systemctl is-system-running || true; uname -r',
      );
      assert.match(out, /^\/dev\/loop\d+ rw,/m, out);
      assert.match(out, /^\/dev\/vda2 \/host$/m, out);
      assert.match(out, /loop=\/images\/1\.0\.img/, out);
      assert.match(out, /boot=ibu/, out);
      assert.match(out, /machine-id [0-9a-f]{32}/, out);
      assert.match(out, /^active$/m, 'acme-agent runs');
      assert.match(out, /^running$/m, 'no failed unit (systemctl is-system-running)');
    } finally {
      await dev.powerOff();
    }
    const res = await dev.done;
    console.log(`boot: ${timeline(res.log)}`);
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `the appliance did not finish\n${tail}`);
    const miss = missingInOrder(res.log, [
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /ibu-initramfs .* starting \(initramfs-tools\): root=UUID=\S+ loop=\/images\/1\.0\.img \(rw\)/,
      /ibu-initramfs .* mounted \/images\/1\.0\.img on \/root via \/dev\/loop\d+/,
      /systemd\[1\]: systemd 257/,
      /acme-agent 1\.0 running/,
      /Reached target multi-user\.target/,
      /reboot: Power down/,
    ]);
    assert.equal(miss, null, `${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    assert.equal(res.code, 0, 'QEMU exited after the guest powered off');
    // The root is a loop device on a file of the host fs, so systemd-shutdown cannot unmount the
    // host fs ("Not all file systems unmounted, 1 left"): it syncs and powers off with the host's
    // journal not checkpointed. The next mount (the initramfs' e2fsck -p) replays it; files GRUB
    // must see are checkpointed by the agent itself (fsfreeze, docs/agent.md). What is durable:
    await host.recoveredCopy(); // throws unless e2fsck -fy finds nothing worse than the replay
  });
});
