/**
 * The initramfs-tools flavour (Debian/Ubuntu devices): an initramfs made by Debian's own
 * mkinitramfs with assets/initramfs-tools/hooks/ibu and scripts/ibu boots the image file through
 * boot=ibu loop=..., and its fatal path (a truncated trial image: e2fsck rc 4 -> initramfs-tools'
 * panic -> reboot -f after panic=5) brings the committed image back in the same QEMU run. And
 * issue #22 in this flavour: a read-only image 3 with its dm-verity tree and the agent's record
 * boots through veritysetup (copied by the hook) with /etc and /var overlays on the host.
 * The initramfs is klibc's (BUSYBOX=n, as on the appliance: no tr, sed, grep, head or wc), and
 * where GRUB cannot write its env (ibu_try_clear=initramfs) its own grubenv writer clears the trial.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import {
  e2eUnavailable,
  kernelKit,
  buildEfi,
  stageBusyboxRoot,
  buildImage,
  writeGrubCfg,
  createGrubenv,
  makeDisk,
  HostFs,
  boot,
  missingInOrder,
  countLines,
  truncateAfterKernel,
  repoRoot,
} from './harness.js';
import { makeWorkDir, removeWorkDir } from './work-dir.js';
import { appendVerityTree } from '../../src/image/verity.js';

const unavailable = e2eUnavailable() ?? (existsSync('/usr/sbin/mkinitramfs') ? null : 'mkinitramfs is missing: install initramfs-tools-core');

describe('initramfs-tools hook and boot=ibu script', { skip: unavailable ?? false }, () => {
  let work = '';
  let disk = '';
  let host: HostFs;
  let image2Bad = '';
  let rootHash3 = '';

  before(async () => {
    work = await makeWorkDir('ibu-e2e-itools-');
    const kit = await kernelKit();
    const initrd = path.join(work, 'initrd.img');
    await run('bash', [path.join(repoRoot(), 'test/e2e/mkinitramfs-tools.sh'), kit.kernelDir, kit.kver, initrd]);
    // klibc only, as on the appliance: the boot script cannot lean on a tool it will not find there
    const listing = (await run('lsinitramfs', [initrd])).stdout;
    assert.match(listing, /^(usr\/)?bin\/sh$/m);
    assert.doesNotMatch(listing, /^(usr\/)?bin\/(busybox|tr|sed|grep|head|wc|awk)$/m, 'no busybox, no coreutils');
    const efi = path.join(work, 'BOOTX64.EFI');
    await buildEfi(efi);
    const stage = path.join(work, 'stage');
    const hostTree = path.join(work, 'host-tree');
    await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
    await stageBusyboxRoot(stage, { version: '1', variant: 'good', kit, initrd });
    await buildImage(stage, path.join(hostTree, 'images/1.img'), '1', 48);
    await stageBusyboxRoot(stage, { version: '2', variant: 'good', kit, initrd });
    image2Bad = path.join(work, '2-truncated.img');
    await buildImage(stage, image2Bad, '2', 48);
    await truncateAfterKernel(image2Bad);
    // image 3: read-only, verified (test/e2e/verity.test.ts has the busybox flavour's failure cases)
    await stageBusyboxRoot(stage, { version: '3', variant: 'verity', kit, initrd });
    await fsp.mkdir(path.join(stage, 'usr/lib/ibu'), { recursive: true });
    await fsp.writeFile(path.join(stage, 'usr/lib/ibu/readonly'), 'readonly\n');
    await fsp.mkdir(path.join(stage, 'usr/share/ibu-e2e'), { recursive: true });
    await fsp.writeFile(path.join(stage, 'usr/share/ibu-e2e/payload.bin'), Buffer.alloc(4 * 1024 * 1024, 7));
    await fsp.mkdir(path.join(stage, 'var/lib'), { recursive: true });
    await buildImage(stage, path.join(hostTree, 'images/3.img'), '3', 48);
    const v3 = await appendVerityTree(path.join(hostTree, 'images/3.img'), { product: 'ibu', version: '3' });
    rootHash3 = v3.rootHash;
    await fsp.mkdir(path.join(hostTree, 'images/.ibu/verity'), { recursive: true });
    await fsp.writeFile(path.join(hostTree, 'images/.ibu/verity/3'), `${v3.rootHash} ${v3.hashOffset}\n`);
    await fsp.rm(stage, { recursive: true, force: true });
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1');
    disk = path.join(work, 'disk.img');
    const offset = await makeDisk({ efi, hostTree, hostMiB: 128, out: disk });
    await fsp.rm(hostTree, { recursive: true, force: true });
    host = new HostFs(disk, offset, work);
  });

  after(async () => {
    await removeWorkDir(work);
  });

  test('mkinitramfs output boots /images/1.img with boot=ibu, host at /host', async () => {
    const res = await boot({ disk, logFile: path.join(work, 'itools-1.log') });
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `the guest did not power off\n${tail}`);
    const miss = missingInOrder(res.log, [
      /ibu: booting image 1 \(trial=0\)/,
      /ibu-initramfs .* starting \(initramfs-tools\): root=UUID=1e0f4b8a-3c2d-4e5f-8a9b-0c1d2e3f4a5b loop=\/images\/1\.img \(ro\)/,
      /ibu-initramfs .* fsck host: e2fsck -p/,
      /ibu-initramfs .* mounted \/images\/1\.img on \/root via \/dev\/loop\d+/,
      /IBU-E2E RUNNING version=1 trial=0/,
      /IBU-E2E root: \/dev\/loop\d+ \/ ext4 ro/,
      /IBU-E2E host: \/dev\/vda2 \/host ext4 rw/,
      /IBU-E2E POWEROFF version=1/,
    ]);
    assert.equal(miss, null, `${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    // read-only loop device: nothing holds the host open for writing, the ro remount checkpoints it
    assert.equal(await host.needsRecovery(), false, 'host fs left with needs_recovery');
  });

  test('a truncated trial image fails fsck in initramfs-tools, reboots, and image 1 boots', async () => {
    await host.putFile('/images/2.img', image2Bad);
    await host.editEnv((bl) => bl.setTry('2'));
    const res = await boot({ disk, logFile: path.join(work, 'itools-2.log') });
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `the guest did not power off\n${tail}`);
    const miss = missingInOrder(res.log, [
      /ibu: booting image 2 \(trial=1\)/,
      /ibu-initramfs .* FATAL: fsck image \/images\/2\.img .*rc=4/,
      /Rebooting automatically due to panic= boot argument/,
      /ibu: default_image=1 try= boot=1 trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
    ]);
    assert.equal(miss, null, `${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    assert.equal(countLines(res.log, /IBU-E2E RUNNING version=2/), 0);
    const st = await host.bootState();
    assert.equal(st.defaultImage, '1');
    assert.equal(st.tryImage, null);
    assert.equal((await host.fsck()).code, 0, 'host fs clean after the reboot');
  });

  test('a read-only verity image boots through dm-verity in initramfs-tools, /etc and /var on the host', async () => {
    await host.editEnv((bl) => bl.setTry('3'));
    const res = await boot({ disk, logFile: path.join(work, 'itools-3.log'), timeoutMs: 900_000 });
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `the guest did not power off\n${tail}`);
    const miss = missingInOrder(res.log, [
      /ibu: booting image 3 \(trial=1\)/,
      /ibu-initramfs .* fsck image \/images\/3\.img skipped: dm-verity/,
      new RegExp(`ibu-initramfs .* dm-verity: /images/3\\.img verified by root hash ${rootHash3}`),
      /ibu-initramfs .* mounted \/images\/3\.img on \/root via \/dev\/mapper\/ibu-root \(ro, trial=1\)/,
      /ibu-initramfs .* read-only image \/images\/3\.img: \/etc and \/var are overlays on the host/,
      /IBU-E2E RUNNING version=3 trial=1/,
      /IBU-E2E root: \/dev\/(mapper\/ibu-root|dm-0) \/ ext4 ro/,
      /IBU-E2E etc: overlay \/etc overlay .*upperdir=\/host\/images\/\.ibu\/etc\/3\/upper/,
      /IBU-E2E rootwrite: .*Read-only file system/,
      /IBU-E2E etcwrite: ok/,
      /IBU-E2E HEALTH OK version=3/,
      /IBU-E2E POWEROFF version=3/,
    ]);
    assert.equal(miss, null, `${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    assert.equal(await host.needsRecovery(), false, 'host fs left with needs_recovery');
    assert.equal((await host.readFile('/images/.ibu/etc/3/upper/ibu-e2e/boots'))?.toString(), '3\n');
  });

  test("where GRUB cannot write its env (ibu_try_clear=initramfs), klibc's initramfs clears try_image and writes the counters", async () => {
    await host.editEnv((bl) => bl.setTry('3'), { tryClearedBy: 'initramfs' });
    const res = await boot({ disk, logFile: path.join(work, 'itools-4.log'), timeoutMs: 900_000 });
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `the guest did not power off\n${tail}`);
    const miss = missingInOrder(res.log, [
      /ibu: booting image 3 \(trial=1\)/,
      /ibu-initramfs .* starting \(initramfs-tools\)/,
      /ibu-initramfs .* wrote try_image= ibu_attempt=3 ibu_tally=x ibu_bad= in \/host\/boot\/grub\/grubenv/,
      /IBU-E2E RUNNING version=3 trial=1/,
      /IBU-E2E POWEROFF version=3/,
    ]);
    assert.equal(miss, null, `${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    assert.doesNotMatch(res.log, /WARNING: no valid grubenv/);
    const st = await host.bootState();
    assert.deepEqual([st.defaultImage, st.tryImage], ['1', null]);
    const [p, b] = await host.envBlocks();
    assert.ok(p.equals(b), 'both copies rewritten alike');
  });
});
