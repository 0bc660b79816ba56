/**
 * dm-verity and read-only roots in QEMU (issue #22), busybox flavour of the initramfs (built with
 * --verity: veritysetup, dm-verity, overlay). Image 2 is read-only (usr/lib/ibu/readonly) with
 * its verity tree appended by the same code `ibu release publish --verity` runs; its verity record
 * (root hash, hash offset) sits where the agent writes it at apply. Proven, reading the serial log
 * and the host fs afterwards:
 *   1. image 2 boots as a trial through dm-verity: root is the verified device, read-only; /etc
 *      is an overlay whose upper dir (pre-seeded as the agent's merge leaves it) is on the host,
 *      /var persistent on the host; writes land there;
 *   2. one flipped byte in a file of image 2 on disk: reading it fails with an I/O error, the
 *      health check fails, the guest reboots without marking the boot good, GRUB boots image 1;
 *   3. a root hash that does not match the tree: the initramfs refuses to open it, reboots, image 1.
 * Each boot logs the payload read time and the initramfs timeline with and without verity
 * (docs/benchmarks.md has the numbers). Needs root.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { appendVerityTree, type VerityInfo } from '../../src/image/verity.js';
import { seededBytes } from '../helpers/ext4-images.js';
import {
  e2eUnavailable,
  kernelKit,
  buildInitramfs,
  buildEfi,
  buildBusyboxImage,
  writeGrubCfg,
  createGrubenv,
  makeDisk,
  HostFs,
  boot,
  missingInOrder,
  countLines,
  timeline,
  type BootResult,
} from './harness.js';
import { makeWorkDir, removeWorkDir } from './work-dir.js';

const unavailable = e2eUnavailable();
const IMG_MIB = 64;
const PAYLOAD = 16 * 1024 * 1024;

describe('dm-verity root and read-only image in QEMU (busybox initramfs)', { skip: unavailable ?? false }, () => {
  let work = '';
  let disk = '';
  let host: HostFs;
  let good2 = '';
  let rotten2 = '';
  let verity: VerityInfo;

  before(async () => {
    work = await makeWorkDir('ibu-e2e-verity-');
    const kit = await kernelKit();
    const initrd = path.join(work, 'initrd.img');
    await buildInitramfs(kit, initrd, [], { verity: true });
    const efi = path.join(work, 'BOOTX64.EFI');
    await buildEfi(efi);
    const stage = path.join(work, 'stage');
    const payload = async (st: string, readonly: boolean): Promise<void> => {
      await fsp.mkdir(path.join(st, 'usr/share/ibu-e2e'), { recursive: true });
      await fsp.writeFile(path.join(st, 'usr/share/ibu-e2e/payload.bin'), seededBytes(PAYLOAD, 5));
      await fsp.mkdir(path.join(st, 'var/lib'), { recursive: true });
      await fsp.writeFile(path.join(st, 'etc/hostname'), 'image-default\n');
      if (readonly) {
        await fsp.mkdir(path.join(st, 'usr/lib/ibu'), { recursive: true });
        await fsp.writeFile(path.join(st, 'usr/lib/ibu/readonly'), 'readonly\n');
      }
    };
    const hostTree = path.join(work, 'host-tree');
    await fsp.mkdir(path.join(hostTree, 'images/.ibu/verity'), { recursive: true });
    await buildBusyboxImage(stage, path.join(hostTree, 'images/1.img'), {
      version: '1',
      variant: 'verity',
      kit,
      initrd,
      sizeMiB: IMG_MIB,
      change: (st) => payload(st, false),
    });
    good2 = path.join(work, '2.img');
    await buildBusyboxImage(stage, good2, { version: '2', variant: 'verity', kit, initrd, sizeMiB: IMG_MIB, change: (st) => payload(st, true) });
    await fsp.rm(stage, { recursive: true, force: true });
    verity = await appendVerityTree(good2, { product: 'ibu', version: '2' });
    console.log(`verity tree of a ${IMG_MIB} MiB image: ${verity.treeBytes} bytes (${((100 * verity.treeBytes) / verity.hashOffset).toFixed(3)} %)`);
    await fsp.copyFile(good2, path.join(hostTree, 'images/2.img'));
    await fsp.writeFile(path.join(hostTree, 'images/.ibu/verity/2'), `${verity.rootHash} ${verity.hashOffset}\n`);
    // what the agent's /etc merge leaves for image 2: the device's hostname in the upper dir
    await fsp.mkdir(path.join(hostTree, 'images/.ibu/etc/2/upper'), { recursive: true });
    await fsp.writeFile(path.join(hostTree, 'images/.ibu/etc/2/upper/hostname'), 'box-from-merge\n');
    // one byte of payload.bin flipped inside the image file, as rot on disk would
    rotten2 = path.join(work, '2-rotten.img');
    await fsp.copyFile(good2, rotten2);
    const blk = Number((await run('debugfs', ['-R', 'bmap /usr/share/ibu-e2e/payload.bin 1000', rotten2])).stdout.trim());
    assert.ok(blk > 0, 'payload block found');
    const fd = await fsp.open(rotten2, 'r+');
    const b = Buffer.alloc(1);
    await fd.read(b, 0, 1, blk * 4096 + 123);
    b[0] = b[0]! ^ 0xff;
    await fd.write(b, 0, 1, blk * 4096 + 123);
    await fd.close();
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1');
    disk = path.join(work, 'disk.img');
    const offset = await makeDisk({ efi, hostTree, hostMiB: 256, out: disk });
    await fsp.rm(hostTree, { recursive: true, force: true });
    host = new HostFs(disk, offset, work);
  });

  after(async () => {
    await removeWorkDir(work);
  });

  async function bootAndExpect(name: string, patterns: RegExp[]): Promise<BootResult> {
    // two boots in one run (a failed trial, then the fallback) on a loaded 2-core machine under TCG
    const res = await boot({ disk, logFile: path.join(work, `${name}.log`), timeoutMs: 1_200_000 });
    console.log(`${name}: ${timeline(res.log)}`);
    for (const l of res.log.split('\n')) if (/HEALTH OK|mounted \/images|switch_root/.test(l)) console.log(`${name}: ${l.trim()}`);
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut, false, `${name}: QEMU did not power off in time\n${tail}`);
    assert.equal(res.stuck, null, `${name}: the guest got stuck\n${tail}`);
    const miss = missingInOrder(res.log, patterns);
    assert.equal(miss, null, `${name}: ${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    assert.equal(await host.needsRecovery(), false, `${name}: host fs left with needs_recovery`);
    return res;
  }

  test('a verity image boots: verified read-only root, /etc overlay from the merge, /etc and /var writes kept on the host', async () => {
    await host.editEnv((bl) => bl.setTry('2'));
    const res = await bootAndExpect('v1-verity-boots', [
      /ibu: booting image 2 \(trial=1/,
      /ibu-initramfs .* fsck image \/images\/2\.img skipped: dm-verity/,
      new RegExp(`ibu-initramfs .* dm-verity: /images/2\\.img verified by root hash ${verity.rootHash}`),
      /ibu-initramfs .* mounted \/images\/2\.img on \/root via \/dev\/mapper\/ibu-root \(ro, trial=1\)/,
      /ibu-initramfs .* read-only image \/images\/2\.img: \/etc and \/var are overlays on the host/,
      /IBU-E2E RUNNING version=2 trial=1/,
      /IBU-E2E root: \/dev\/(mapper\/ibu-root|dm-0) \/ ext4 ro/,
      /IBU-E2E etc: overlay \/etc overlay .*upperdir=\/host\/images\/\.ibu\/etc\/2\/upper/,
      /IBU-E2E var: overlay \/var overlay .*upperdir=\/host\/images\/\.ibu\/var\/upper/,
      /IBU-E2E hostname: box-from-merge/,
      /IBU-E2E rootwrite: .*Read-only file system/,
      /IBU-E2E etcwrite: ok/,
      /IBU-E2E varwrite: 2/,
      /IBU-E2E HEALTH OK version=2/,
      /IBU-E2E POWEROFF version=2/,
    ]);
    assert.equal(countLines(res.log, /HEALTH FAIL/), 0);
    assert.equal((await host.readFile('/images/.ibu/etc/2/upper/ibu-e2e/boots'))?.toString(), '2\n', 'the /etc write is in the upper dir on the host');
    assert.equal((await host.readFile('/images/.ibu/var/upper/lib/ibu-e2e/boots'))?.toString(), '2\n', '/var is on the host');
    assert.equal((await host.env()).try_image ?? '', '');
  });

  test('one flipped byte in a file of the image on disk: I/O error on read, health check fails, GRUB falls back to image 1', async () => {
    await host.putFile('/images/2.img', rotten2);
    await host.editEnv((bl) => bl.setTry('2'));
    const res = await bootAndExpect('v2-rotten-block', [
      /ibu: booting image 2 \(trial=1/,
      /ibu-initramfs .* mounted \/images\/2\.img on \/root via \/dev\/mapper\/ibu-root/,
      /IBU-E2E RUNNING version=2 trial=1/,
      /IBU-E2E HEALTH FAIL version=2: .*(I\/O error|Input\/output error)/,
      /IBU-E2E REBOOT version=2/,
      /ibu: default_image=1 try= /,
      /ibu: booting image 1 \(trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
      /IBU-E2E HEALTH OK version=1/,
      /IBU-E2E POWEROFF version=1/,
    ]);
    assert.ok(/verity.*(corrupted|data block)/i.test(res.log), 'the kernel names the corrupted block');
    assert.equal(countLines(res.log, /IBU-E2E BOOT-GOOD version=2/), 0, 'the failed boot was not marked good');
    const env = await host.env();
    assert.equal(env.default_image, '1');
  });

  test('a root hash that does not match the tree: the initramfs refuses to mount it and image 1 boots', async () => {
    await host.putFile('/images/2.img', good2);
    const wrong = path.join(work, 'wrong-record');
    await fsp.writeFile(wrong, `${'0'.repeat(64)} ${verity.hashOffset}\n`);
    await host.putFile('/images/.ibu/verity/2', wrong);
    await host.editEnv((bl) => bl.setTry('2'));
    const res = await bootAndExpect('v3-roothash-mismatch', [
      /ibu: booting image 2 \(trial=1/,
      /ibu-initramfs .* FATAL: dm-verity: \/images\/2\.img does not match the root hash the agent recorded/,
      /ibu-initramfs .* rebooting in 5s/,
      /ibu: default_image=1 try= /,
      /ibu: booting image 1 \(trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
    ]);
    assert.equal(countLines(res.log, /IBU-E2E RUNNING version=2/), 0);
    assert.equal((await host.fsck()).code, 0, 'host fs clean after the initramfs reboot');
  });
});
