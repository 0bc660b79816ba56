/**
 * Always boot a good image, unaided (issue #14, docs/boot.md "Failures"): from a working device
 * disk (images 1 and 2, 2 committed), one kind of damage per run, and the device must end on a
 * good image within a bounded number of resets, without a menu and without help. Real OVMF,
 * GRUB (assets/grub/make-efi.sh + 10_ibu with IBU_BOOT_TRIES=2), kernel and initramfs; the test
 * images' init marks each boot good the way the agent does (test/e2e/image-init.sh). What the
 * agent and the server do afterwards (repair, events, problems) is test/agent/boot-health.test.ts.
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
  TEST_BOOT_TRIES,
  type BootResult,
} from './harness.js';
import { makeWorkDir, removeWorkDir } from './work-dir.js';

const unavailable = e2eUnavailable();
const IMG_MIB = 40;
const GARBAGE_ENV = Buffer.alloc(1024, 0x5a);

describe('boot recovery: one damaged file never leaves the device stuck', { skip: unavailable ?? false }, () => {
  let work = '';
  let pristine = '';
  let disk = '';
  let host: HostFs;
  const v: Record<string, string> = {};

  before(async () => {
    work = await makeWorkDir('ibu-e2e-recovery-');
    const { kit, initrd, efi } = await bootMedia(work);
    const stage = path.join(work, 'stage');
    const dir = path.join(work, 'variants');
    await fsp.mkdir(dir);
    const make = async (name: string, version: string, change?: (stage: string) => Promise<void>) => {
      v[name] = await buildBusyboxImage(stage, path.join(dir, `${name}.img`), { version, kit, initrd, sizeMiB: IMG_MIB, change });
    };
    const cutInHalf = async (f: string) => fsp.truncate(f, Math.floor((await fsp.stat(f)).size / 2));
    await make('1', '1');
    await make('2', '2');
    await make('2-initrd-cut', '2', (s) => cutInHalf(path.join(s, 'initrd.img')));
    await make('2-kernel-cut', '2', (s) => cutInHalf(path.join(s, 'vmlinuz')));
    await fsp.rm(stage, { recursive: true, force: true });
    v['2-truncated'] = path.join(dir, '2-truncated.img');
    await fsp.copyFile(v['2']!, v['2-truncated']);
    await truncateAfterKernel(v['2-truncated']);
    // The ext4 superblock (bytes 1024-2047) overwritten: GRUB sees no filesystem in the file.
    for (const n of ['1', '2']) {
      v[`${n}-nosb`] = path.join(dir, `${n}-nosb.img`);
      await fsp.copyFile(v[n]!, v[`${n}-nosb`]!);
      const fh = await fsp.open(v[`${n}-nosb`]!, 'r+');
      await fh.write(randomBytes(1024), 0, 1024, 1024);
      await fh.close();
    }
    const tree = path.join(work, 'host-tree');
    await fsp.mkdir(path.join(tree, 'images'), { recursive: true });
    await fsp.copyFile(v['1']!, path.join(tree, 'images/1.img'));
    await fsp.copyFile(v['2']!, path.join(tree, 'images/2.img'));
    await writeGrubCfg(tree);
    await createGrubenv(tree, '2');
    pristine = path.join(work, 'disk.pristine.img');
    const offset = await makeDisk({ efi, hostTree: tree, hostMiB: 192, out: pristine });
    await fsp.rm(tree, { recursive: true, force: true });
    disk = path.join(work, 'disk.img');
    host = new HostFs(disk, offset, work);
  });

  after(async () => {
    await removeWorkDir(work);
  });

  /** A fresh copy of the working disk, then the damage. */
  async function damaged(change: () => Promise<void>): Promise<void> {
    await run('cp', ['--sparse=always', pristine, disk]);
    await change();
  }

  /** Boots until the guest powers off (or `killOn`); asserts the serial patterns in order and no GRUB menu. */
  async function bootAndExpect(name: string, patterns: RegExp[], killOn?: RegExp): Promise<BootResult> {
    const res = await boot({ disk, logFile: path.join(work, `${name}.log`), killOn, timeoutMs: 600_000 });
    console.log(`${name}: ${timeline(res.log)}`);
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.stuck, null, `${name}: stuck at ${res.stuck}\n${tail}`);
    assert.equal(res.timedOut, false, `${name}: timed out\n${tail}`);
    const miss = missingInOrder(res.log, patterns);
    assert.equal(miss, null, `${name}: missing ${miss}\n${tail}`);
    return res;
  }

  const resets = (res: BootResult): number => countLines(res.log, /BdsDxe: loading Boot/) - 1;
  const ended = (version: string): RegExp[] => [new RegExp(`IBU-E2E RUNNING version=${version} trial=0`), /IBU-E2E BOOT-GOOD/, /IBU-E2E POWEROFF/];

  test('the committed image panics at every boot (its initrd cut short): after 2 boots GRUB skips it and boots 1', async () => {
    await damaged(() => host.putFile('/images/2.img', v['2-initrd-cut']!));
    const res = await bootAndExpect('a-initrd-cut', [
      /ibu: booting image 2 \(trial=0\), boot x of xx/,
      /Kernel panic/,
      /ibu: booting image 2 \(trial=0\), boot xx of xx/,
      /Kernel panic/,
      /ibu: 2 did not come up in 2 boots; skipping it/,
      /ibu: booting image 1 \(trial=0\), boot x of xx/,
      ...ended('1'),
    ]);
    assert.equal(resets(res), TEST_BOOT_TRIES, 'one reset per counted boot of 2');
    const env = await host.env();
    assert.deepEqual([env.default_image, env.ibu_bad, env.ibu_attempt], ['2', '2', ''], JSON.stringify(env));
  });

  test('the committed image file truncated: the initramfs fsck fails at each boot, GRUB gives up on it, 1 boots', async () => {
    await damaged(() => host.putFile('/images/2.img', v['2-truncated']!));
    const res = await bootAndExpect('b-truncated', [
      /ibu: booting image 2 \(trial=0\), boot x of xx/,
      /ibu-initramfs .* FATAL: fsck image \/images\/2\.img/,
      /ibu: booting image 2 \(trial=0\), boot xx of xx/,
      /ibu: 2 did not come up in 2 boots; skipping it/,
      /ibu: booting image 1/,
      ...ended('1'),
    ]);
    assert.equal(resets(res), TEST_BOOT_TRIES);
    assert.equal((await host.fsck()).code, 0, 'host fs clean after the initramfs reboots');
  });

  test('both env copies lost after the oldest image was deleted: GRUB finds 2 on the disk and boots it', async () => {
    await damaged(async () => {
      await host.putFile('/images/1.img', null);
      await host.putFile('/boot/grub/grubenv', null);
      await host.putFile('/boot/grub/grubenv.bak', null);
    });
    // (No BOOT-GOOD line: with no env there is no counter to reset; the agent rebuilds the env.)
    const res = await bootAndExpect('c-env-lost', [
      /ibu: no valid boot environment/,
      /ibu: booting image 2 \(trial=0/,
      /IBU-E2E RUNNING version=2 trial=0/,
      /IBU-E2E POWEROFF/,
    ]);
    assert.equal(resets(res), 0);
  });

  test('the primary env copy overwritten with garbage: GRUB uses the valid backup and boots the committed 2', async () => {
    await damaged(() => host.writeInPlace('/boot/grub/grubenv', GARBAGE_ENV));
    const res = await bootAndExpect('d-primary-garbage', [
      /ibu: \/boot\/grub\/grubenv is damaged/,
      /ibu: default_image=2 /,
      /ibu: booting image 2 \(trial=0/,
      ...ended('2'),
    ]);
    assert.equal(countLines(res.log, /booting image 1/), 0, 'the older image is not booted');
    assert.equal((await host.env()).default_image, '2', 'the backup (what the agent reads) still says 2');
  });

  test('both env copies garbage: GRUB boots an image it finds on the disk, without a menu', async () => {
    await damaged(async () => {
      await host.writeInPlace('/boot/grub/grubenv', GARBAGE_ENV);
      await host.writeInPlace('/boot/grub/grubenv.bak', GARBAGE_ENV);
    });
    const res = await bootAndExpect('e-both-garbage', [
      /ibu: no valid boot environment/,
      /ibu: booting image (1|2) \(trial=0/,
      /IBU-E2E RUNNING version=(1|2)/,
    ]);
    assert.equal(resets(res), 0);
  });

  test("the committed image's kernel cut short: GRUB loads it, the machine resets at each boot, after 2 GRUB boots 1", async () => {
    await damaged(() => host.putFile('/images/2.img', v['2-kernel-cut']!));
    const res = await bootAndExpect('f-kernel-cut', [
      /ibu: booting image 2 \(trial=0\), boot x of xx/,
      /ibu: booting image 2 \(trial=0\), boot xx of xx/,
      /ibu: 2 did not come up in 2 boots; skipping it/,
      /ibu: booting image 1/,
      ...ended('1'),
    ]);
    assert.equal(resets(res), TEST_BOOT_TRIES);
  });

  test("the committed image's superblock destroyed: the pre-check skips it, 1 boots in the same boot", async () => {
    await damaged(() => host.putFile('/images/2.img', v['2-nosb']!));
    const res = await bootAndExpect('g-superblock', [
      /ibu: 2 skipped: missing, empty, or no \/vmlinuz or \/initrd\.img/,
      /ibu: booting image 1/,
      ...ended('1'),
    ]);
    assert.equal(resets(res), 0);
  });

  test("the host's grub.cfg overwritten with garbage: the copy built into GRUB boots the committed 2", async () => {
    const garbage = { bytes: Buffer.alloc(0) };
    await damaged(async () => {
      const size = (await host.readFile('/boot/grub/grub.cfg'))!.length;
      garbage.bytes = randomBytes(size);
      await host.writeInPlace('/boot/grub/grub.cfg', garbage.bytes);
    });
    try {
      const res = await bootAndExpect('h-grubcfg', [
        /ibu: \/boot\/grub\/grub\.cfg on the host is missing or booted nothing; using the built-in copy/,
        /ibu: booting image 2 \(trial=0/,
        ...ended('2'),
      ]);
      assert.equal(resets(res), 0);
    } catch (err) {
      // Random bytes: should a boot fail, these replay it. (The grub> prompt seen in CI on
      // 2026-12-05 was an empty built-in copy, not the bytes: test/e2e/boot-scripts.test.ts.)
      (err as Error).message += `\ngrub.cfg garbage (base64): ${garbage.bytes.toString('base64')}`;
      throw err;
    }
  });

  test('nothing bootable left: a clear message, the failure marks forgotten, a timed reboot (not a menu)', async () => {
    await damaged(async () => {
      await host.putFile('/images/2.img', v['2-initrd-cut']!);
      await host.putFile('/images/1.img', v['1-nosb']!);
    });
    await bootAndExpect(
      'i-none-left',
      [
        /ibu: booting image 2 \(trial=0\), boot xx of xx/,
        /ibu: 2 did not come up in 2 boots; skipping it/,
        /ibu: 1 skipped: missing, empty/,
        /ibu: no bootable image left in \/images/,
        /ibu: the failed boots are forgotten; rebooting in 3 s to try them all again/,
      ],
      /rebooting in 3 s to try them all again/,
    );
    const env = await host.env();
    assert.deepEqual([env.ibu_bad, env.ibu_attempt, env.default_image], ['', '', '2'], JSON.stringify(env));
  });
});
