import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';
import { detectEnvWritability, parseMountInfo, mountFor, resolveEnvLocation } from '../../src/boot/env-location.js';

/**
 * A real loop-mounted ext4 (GRUB can write it) as root. Device-mapper, md RAID, ZFS and btrfs
 * cannot be created on this kernel, so those cases use mountinfo text and a generated sysfs tree
 * shaped like the kernel's (said so below).
 */
async function withLoopFs(fn: (mnt: string) => Promise<void>): Promise<void> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-envloc-'));
  const img = path.join(dir, 'disk.img');
  const mnt = path.join(dir, 'mnt');
  await fsp.mkdir(mnt);
  await fsp.writeFile(img, Buffer.alloc(0));
  await fsp.truncate(img, 16 * 1024 * 1024);
  let loop = '';
  let mounted = false;
  try {
    loop = (await run('losetup', ['--find', '--show', img])).stdout.trim();
    await run('mke2fs', ['-q', '-t', 'ext4', loop]);
    await run('mount', [loop, mnt]);
    mounted = true;
    await fn(mnt);
  } finally {
    if (mounted) await run('umount', [mnt], { allowFailure: true });
    if (loop) await run('losetup', ['-d', loop], { allowFailure: true });
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

test('plain ext4 on a loop device is writable by GRUB', async () => {
  await withLoopFs(async (mnt) => {
    await fsp.mkdir(path.join(mnt, 'boot', 'grub'), { recursive: true });
    const w = await detectEnvWritability(path.join(mnt, 'boot', 'grub'));
    assert.equal(w.writable, true, w.reason);
    assert.equal(w.fsType, 'ext4');
    const loc = await resolveEnvLocation({ hostMount: mnt });
    assert.deepEqual([loc.dir, loc.tryClearedBy], [path.join(mnt, 'boot', 'grub'), 'grub']);
  });
});

/** A generated sysfs tree shaped like the kernel's (this kernel has no device-mapper or md, so they cannot be created here). */
async function fakeSysfs(): Promise<string> {
  const sys = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-sysfs-'));
  const vb = path.join(sys, 'devices', 'virtual', 'block');
  // dm-0 (an LVM logical volume): /sys/dev/block/252:0 -> devices/virtual/block/dm-0 with dm/name
  await fsp.mkdir(path.join(vb, 'dm-0', 'dm'), { recursive: true });
  await fsp.writeFile(path.join(vb, 'dm-0', 'dm', 'name'), 'vg0-root\n');
  // md0p1, a partition of an md array
  await fsp.mkdir(path.join(vb, 'md0', 'md'), { recursive: true });
  await fsp.mkdir(path.join(vb, 'md0', 'md0p1'), { recursive: true });
  await fsp.writeFile(path.join(vb, 'md0', 'md0p1', 'partition'), '1\n');
  // vda1, a plain partition (the ESP)
  const vda = path.join(sys, 'devices', 'pci0000:00', 'virtio1', 'block', 'vda');
  await fsp.mkdir(path.join(vda, 'vda1'), { recursive: true });
  await fsp.writeFile(path.join(vda, 'vda1', 'partition'), '1\n');
  await fsp.mkdir(path.join(sys, 'dev', 'block'), { recursive: true });
  await fsp.symlink(path.join(vb, 'dm-0'), path.join(sys, 'dev', 'block', '252:0'));
  await fsp.symlink(path.join(vb, 'md0', 'md0p1'), path.join(sys, 'dev', 'block', '9:1'));
  await fsp.symlink(path.join(vda, 'vda1'), path.join(sys, 'dev', 'block', '254:1'));
  return sys;
}

const MOUNTINFO = [
  '27 1 254:0 / / rw,relatime - ext4 /dev/vda rw',
  '40 27 0:50 / /pool rw - zfs rpool/ROOT rw',
  '41 27 0:51 / /bt rw - btrfs /dev/vdb rw',
  '42 27 0:52 / /mem rw - tmpfs tmpfs rw',
  '43 27 9:1 / /raid rw - ext4 /dev/md0p1 rw',
  '44 27 0:53 / /with\\040space rw - zfs x rw',
  '45 27 252:0 / /lvm rw - ext4 /dev/mapper/vg0-root rw',
  '46 45 254:1 / /lvm/boot/efi rw - vfat /dev/vda1 rw',
].join('\n');

test('LVM (device-mapper) host: not writable; the ESP holds the env when configured, else the initramfs clears try_image', async () => {
  const sys = await fakeSysfs();
  try {
    const opts = { mountInfoText: MOUNTINFO, sysRoot: sys };
    const w = await detectEnvWritability('/lvm/boot/grub', opts);
    assert.equal(w.writable, false);
    assert.match(w.reason, /device-mapper \(vg0-root/);
    const noEsp = await resolveEnvLocation({ hostMount: '/lvm' }, opts);
    assert.deepEqual([noEsp.dir, noEsp.tryClearedBy], ['/lvm/boot/grub', 'initramfs']);
    const esp = await resolveEnvLocation({ hostMount: '/lvm', espEnvDir: '/lvm/boot/efi/EFI/ibu' }, opts);
    assert.deepEqual([esp.dir, esp.tryClearedBy], ['/lvm/boot/efi/EFI/ibu', 'grub']);
    assert.match(esp.reason, /ESP/);
  } finally {
    await fsp.rm(sys, { recursive: true, force: true });
  }
});

test('ZFS, btrfs, tmpfs and md RAID are not writable (mountinfo text and a generated sysfs tree: these cannot be created here)', async () => {
  assert.equal(mountFor(parseMountInfo(MOUNTINFO), '/with space/boot')?.fsType, 'zfs');
  const sys = await fakeSysfs();
  try {
    const opts = { mountInfoText: MOUNTINFO, sysRoot: sys };
    for (const [dir, re] of [
      ['/pool/boot/grub', /ZFS/],
      ['/bt/boot/grub', /btrfs/],
      ['/mem/x', /tmpfs/],
      ['/raid/boot/grub', /md RAID/],
    ] as const) {
      const w = await detectEnvWritability(dir, opts);
      assert.equal(w.writable, false, dir);
      assert.match(w.reason, re);
    }
    assert.equal((await detectEnvWritability('/lvm/boot/efi/EFI', opts)).writable, true);
  } finally {
    await fsp.rm(sys, { recursive: true, force: true });
  }
});
