/**
 * The boot chain, proven with real boots: OVMF -> GRUB EFI (assets/grub/make-efi.sh) -> the
 * host grub.cfg from assets/grub/10_ibu -> Debian's kernel from the image file -> the ibu
 * initramfs (assets/initramfs) -> the image's /sbin/init. Every assertion reads the guest's
 * serial log and the grubenv left on the disk afterwards. Timings are logged, never asserted.
 * Needs root; set IBU_E2E_KEEP=1 to keep the work dir (logs, disks) for reading.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import {
  e2eUnavailable,
  bootMedia,
  buildBusyboxImage,
  writeGrubCfg,
  createGrubenv,
  makeDisk,
  truncateAfterKernel,
  HostFs,
  boot,
  missingInOrder,
  countLines,
  timeline,
  type BootResult,
} from './harness.js';
import { makeWorkDir, removeWorkDir } from './work-dir.js';

const unavailable = e2eUnavailable();
const IMG_MIB = 40;

describe('boot chain: GRUB loopback, try-once, fallback, initramfs loop=', { skip: unavailable ?? false }, () => {
  let work = '';
  let pristine = '';
  let disk = '';
  let offset = 0;
  let host: HostFs;
  const variants: Record<string, string> = {};

  before(async () => {
    work = await makeWorkDir('ibu-e2e-boot-');
    const { kit, initrd, efi } = await bootMedia(work);
    const stage = path.join(work, 'stage');
    const imgDir = path.join(work, 'variants');
    await fsp.mkdir(imgDir);
    const make = async (name: string, version: string, variant: string, kernel = true, change?: (stage: string) => Promise<void>) => {
      variants[name] = await buildBusyboxImage(stage, path.join(imgDir, `${name}.img`), { version, variant, kit, initrd, kernel, sizeMiB: IMG_MIB, change });
    };
    await make('1', '1', 'good');
    await make('2-good', '2', 'good');
    await make('2-commit', '2', 'commit');
    await make('2-panic', '2', 'panic');
    await make('2-nokernel', '2', 'good', false);
    // an interrupted download: kernel and initrd (written first) intact, the rest missing
    variants['2-truncated'] = path.join(imgDir, '2-truncated.img');
    await fsp.copyFile(variants['2-good'], variants['2-truncated']);
    await truncateAfterKernel(variants['2-truncated']);
    // a kernel GRUB cannot load: random bytes in place of /vmlinuz
    await make('2-badkernel', '2', 'good', true, (st) => fsp.writeFile(path.join(st, 'vmlinuz'), randomBytes(2_000_000)));
    await fsp.rm(stage, { recursive: true, force: true });

    const hostTree = path.join(work, 'host-tree');
    await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
    await fsp.copyFile(variants['1'], path.join(hostTree, 'images/1.img'));
    await fsp.copyFile(variants['2-good'], path.join(hostTree, 'images/2.img'));
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1');
    pristine = path.join(work, 'disk.pristine.img');
    offset = await makeDisk({ efi, hostTree, hostMiB: 128, out: pristine });
    await fsp.rm(hostTree, { recursive: true, force: true });
    disk = path.join(work, 'disk.img');
    host = new HostFs(disk, offset, work);
  });

  after(async () => {
    await removeWorkDir(work);
  });

  /** Fresh disk; `tryImage` set the way the agent's apply does; image 2 replaced or removed. */
  async function reset(opts: { tryImage?: string; defaultImage?: string; image2?: string | null } = {}): Promise<void> {
    await run('cp', ['--sparse=always', pristine, disk]);
    if (opts.image2 !== undefined) await host.putFile('/images/2.img', opts.image2 === null ? null : variants[opts.image2]);
    if (opts.defaultImage) await host.editEnv((bl) => bl.commit(opts.defaultImage!));
    if (opts.tryImage) await host.editEnv((bl) => bl.setTry(opts.tryImage!));
  }

  async function bootAndExpect(name: string, patterns: RegExp[]): Promise<BootResult> {
    const res = await boot({ disk, logFile: path.join(work, `${name}.log`) });
    console.log(`${name}: ${timeline(res.log)}`);
    const miss = missingInOrder(res.log, patterns);
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut, false, `${name}: QEMU did not power off in time\n${tail}`);
    assert.equal(res.stuck, null, `${name}: the guest got stuck\n${tail}`);
    assert.equal(miss, null, `${name}: ${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    assert.equal(res.code, 0, `${name}: qemu exit status ${res.code}`);
    // the image remounted /host read-only before powering off: the journal must be checkpointed
    assert.equal(await host.needsRecovery(), false, `${name}: host fs left with needs_recovery`);
    return res;
  }

  async function assertEnv(expect: Record<string, string>): Promise<void> {
    const env = await host.env();
    for (const [k, v] of Object.entries(expect)) assert.equal(env[k] ?? '', v, `grubenv ${k} (env: ${JSON.stringify(env)})`);
  }

  test('default_image=1 boots image 1 from its file, read-only loop root, host at /host', async () => {
    await reset();
    const res = await bootAndExpect('01-default', [
      /ibu: default_image=1 try= bad= attempt=\//,
      /ibu: booting image 1 \(trial=0\), boot x of xx/,
      /ibu-initramfs .* fsck host: e2fsck -p/,
      /ibu-initramfs .* mounted \/images\/1\.img on \/root via \/dev\/loop\d+ \(ro, trial=0\)/,
      /IBU-E2E RUNNING version=1 trial=0/,
      /IBU-E2E root: \/dev\/loop\d+ \/ ext4 ro/,
      /IBU-E2E host: \/dev\/vda2 \/host ext4 rw/,
      /IBU-E2E cmdline: .*root=UUID=1e0f4b8a-3c2d-4e5f-8a9b-0c1d2e3f4a5b loop=\/images\/1\.img/,
      /IBU-E2E POWEROFF version=1/,
    ]);
    assert.equal(countLines(res.log, /IBU-E2E RUNNING/), 1);
    assert.equal(countLines(res.log, /IBU-E2E BOOT-GOOD version=1/), 1);
    await assertEnv({ default_image: '1', try_image: '' });
  });

  test('try_image=2 boots image 2 once (GRUB clears the flag); without a commit the next boot is image 1', async () => {
    await reset({ tryImage: '2' });
    await bootAndExpect('02-try', [
      /ibu: default_image=1 try=2 /,
      /ibu: booting image 2 \(trial=1/,
      /IBU-E2E RUNNING version=2 trial=1/,
      /IBU-E2E cmdline: .*ibu\.trial=1/,
      /IBU-E2E POWEROFF version=2/,
    ]);
    await assertEnv({ default_image: '1', try_image: '' });
    await bootAndExpect('03-no-commit', [/ibu: default_image=1 try= /, /ibu: booting image 1 \(trial=0/, /IBU-E2E RUNNING version=1 trial=0/]);
    await assertEnv({ default_image: '1', try_image: '' });
  });

  test('a trial image that commits itself (grubenv rewritten in place) stays the default', async () => {
    await reset({ tryImage: '2', image2: '2-commit' });
    await bootAndExpect('04-commit', [/booting image 2 \(trial=1/, /IBU-E2E RUNNING version=2 trial=1/, /IBU-E2E COMMITTED default_image=2/]);
    await assertEnv({ default_image: '2', try_image: '' });
    await bootAndExpect('05-after-commit', [/ibu: default_image=2 try= /, /booting image 2 \(trial=0/, /IBU-E2E RUNNING version=2 trial=0/]);
    assert.equal((await host.fsck()).code, 0, 'host fs clean after the guest wrote grubenv');
  });

  test('image 2 panics the kernel: panic=5 resets and image 1 boots, in one QEMU run', async () => {
    await reset({ tryImage: '2', image2: '2-panic' });
    const res = await bootAndExpect('06-panic', [
      /booting image 2 \(trial=1/,
      /IBU-E2E BROKEN version=2/,
      /Kernel panic - not syncing/,
      /ibu: default_image=1 try= /,
      /booting image 1 \(trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
      /IBU-E2E POWEROFF version=1/,
    ]);
    assert.equal(countLines(res.log, /IBU-E2E RUNNING version=2/), 0);
    await assertEnv({ default_image: '1', try_image: '' });
  });

  test('image 2 without a kernel: the GRUB pre-check boots image 1 in the same boot', async () => {
    await reset({ tryImage: '2', image2: '2-nokernel' });
    const res = await bootAndExpect('07-nokernel', [
      /ibu: default_image=1 try=2 /,
      /ibu: 2 skipped: missing, empty, or no \/vmlinuz or \/initrd\.img/,
      /booting image 1 \(trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
    ]);
    assert.equal(countLines(res.log, /ibu: booting image 2/), 0, 'image 2 must not be tried');
    assert.equal(countLines(res.log, /error:/), 0, 'no GRUB error printed');
    assert.equal(countLines(res.log, /BdsDxe: loading Boot/), 1, 'one firmware boot, no reset');
    await assertEnv({ default_image: '1', try_image: '' });
  });

  test('image 2 missing altogether: the pre-check boots image 1', async () => {
    await reset({ tryImage: '2', image2: null });
    await bootAndExpect('08-missing', [/ibu: 2 skipped: missing/, /booting image 1 \(trial=0/, /IBU-E2E RUNNING version=1 trial=0/]);
    await assertEnv({ default_image: '1', try_image: '' });
  });

  test('truncated image 2: the initramfs fsck fails (rc=4), reboots, and image 1 boots', async () => {
    await reset({ tryImage: '2', image2: '2-truncated' });
    const res = await bootAndExpect('09-truncated', [
      /ibu: booting image 2 \(trial=1/,
      /ibu-initramfs .* FATAL: fsck image \/images\/2\.img .*rc=4/,
      /ibu-initramfs .* rebooting in 5s/,
      /ibu: default_image=1 try= /,
      /booting image 1 \(trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
    ]);
    assert.equal(countLines(res.log, /IBU-E2E RUNNING version=2/), 0);
    await assertEnv({ default_image: '1', try_image: '' });
    assert.equal((await host.fsck()).code, 0, 'host fs clean after the initramfs reboot');
  });

  test('image 2 with a kernel GRUB cannot load: GRUB marks it bad and boots image 1 in the same boot', async () => {
    await reset({ tryImage: '2', image2: '2-badkernel' });
    const res = await bootAndExpect('10-badkernel', [
      /ibu: booting image 2 \(trial=1/,
      /ibu: GRUB cannot load the kernel or initrd of 2; skipping it/,
      /ibu: booting image 1 \(trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
    ]);
    assert.equal(countLines(res.log, /BdsDxe: loading Boot/), 1, 'one firmware boot, no reset');
    await assertEnv({ default_image: '1', try_image: '', ibu_bad: '2' });
  });

  test('a torn primary env copy (agent cut off mid-write) is ignored: GRUB uses the backup', async () => {
    await reset();
    const [, before] = await host.envBlocks();
    await host.editEnv((bl) => bl.setTry('2'));
    const [primary] = await host.envBlocks();
    // the sector with ibu_check still holds the old block: the new seq is not confirmed
    const seqNew = /ibu_seq=(\d+)/.exec(primary.toString('latin1'))![1];
    const seqOld = /ibu_seq=(\d+)/.exec(before.toString('latin1'))![1];
    const torn = Buffer.from(primary.toString('latin1').replace(`ibu_check=${seqNew}`, `ibu_check=${seqOld}`), 'latin1');
    await host.writeInPlace('/boot/grub/grubenv', torn);
    await host.writeInPlace('/boot/grub/grubenv.bak', before);
    const st = await host.bootState();
    assert.equal(st.tryImage, null, 'the agent reads the backup too');
    await bootAndExpect('12-torn-primary', [
      /ibu: \/boot\/grub\/grubenv is damaged \(unreadable, or ibu_seq\/ibu_check missing or different\)/,
      /ibu: default_image=1 try= /,
      /booting image 1 \(trial=0/,
      /IBU-E2E RUNNING version=1 trial=0/,
    ]);
  });

  test('where GRUB cannot write its env (ibu_try_clear=initramfs), the initramfs clears try_image', async () => {
    await reset();
    await host.editEnv((bl) => bl.setTry('2'), { tryClearedBy: 'initramfs' });
    const [primary] = await host.envBlocks();
    assert.match(primary.toString('latin1'), /ibu_try_clear=initramfs/);
    await bootAndExpect('13-initramfs-clears', [
      /ibu: default_image=1 try=2 /,
      /booting image 2 \(trial=1/,
      /ibu-initramfs .* wrote try_image= ibu_attempt=2 ibu_tally=x ibu_bad= in \/host\/boot\/grub\/grubenv/,
      /IBU-E2E RUNNING version=2 trial=1/,
      /IBU-E2E cmdline: .*ibu\.attempt=2 ibu\.tally=x ibu\.bad= ibu\.tryclear=1/,
    ]);
    // The image's init marked the boot good afterwards (attempt cleared), as the agent does.
    await assertEnv({ default_image: '1', try_image: '', ibu_attempt: '' });
    const [p2, b2] = await host.envBlocks();
    assert.equal(p2.toString('latin1'), b2.toString('latin1'), 'both copies rewritten alike');
    assert.doesNotMatch(p2.toString('latin1'), /try_image=2/);
  });

  test('default_image names no installed image: the newest one that passes the pre-check boots', async () => {
    await reset({ defaultImage: '7' });
    await bootAndExpect('11-no-default', [/ibu: 7 skipped: missing/, /booting image 2 \(trial=0/, /IBU-E2E RUNNING version=2 trial=0/]);
  });
});
