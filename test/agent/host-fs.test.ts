/**
 * The host partition as a real ext4 filesystem on a loop device (root needed, as on the device):
 * fsfreeze checkpoints for GRUB, proven by reading the raw device with debugfs (no journal
 * replay, like GRUB), and the disk policy on a nearly full filesystem.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp, constants as fsConstants } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';
import { cli, makeDevice, type Device } from './device.js';
import { bytesToAllocate } from '../../src/agent/disk-policy.js';
import { withImageMounted } from '../../src/agent/migration.js';

async function withHostFs(sizeMiB: number, fn: (mnt: string, loopDev: string) => Promise<void>): Promise<void> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-hostfs-'));
  const img = path.join(dir, 'host.img');
  const mnt = path.join(dir, 'host');
  await fsp.mkdir(mnt);
  await fsp.writeFile(img, '');
  await fsp.truncate(img, sizeMiB * 1024 * 1024);
  let loop = '';
  let mounted = false;
  try {
    // -m 0: no root-reserved blocks, so the numbers below are the numbers everyone sees.
    await run('mke2fs', ['-q', '-t', 'ext4', '-m', '0', img]);
    loop = (await run('losetup', ['--find', '--show', img])).stdout.trim();
    await run('mount', [loop, mnt]);
    mounted = true;
    await fn(mnt, loop);
  } finally {
    if (mounted) {
      await run('fsfreeze', ['--unfreeze', mnt], { allowFailure: true });
      await run('umount', [mnt], { allowFailure: true });
    }
    if (loop) await run('losetup', ['-d', loop], { allowFailure: true });
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await fsp.readFile(file))
    .digest('hex');
}

test('apply checkpoints the host fs: the raw device (what GRUB reads) shows the new image and try_image', async () => {
  await withHostFs(96, async (mnt, loop) => {
    const dev = await makeDevice({ running: '1.0', releases: [{ version: '1.0' }, { version: '2.0' }], hostMount: mnt });
    try {
      await dev.writeConfig({ checkpoint: 'fsfreeze' });
      {
        const r0 = await cli(dev, ['init', '--default', '1.0']);
        assert.equal(r0.code, 0, r0.stderr);
      }
      assert.equal((await cli(dev, ['prepare', '--version', '2.0'])).code, 0);
      const r = await cli(dev, ['apply', '--now', '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json!.outcome, 'rebooting');
      // debugfs reads the block device without replaying the journal, exactly GRUB's view.
      const env = (await run('debugfs', ['-R', 'cat /boot/grub/grubenv', loop])).stdout;
      assert.match(env, /^try_image=2\.0$/m);
      assert.match(env, /^default_image=1\.0$/m);
      const out = path.join(dev.dir, 'grub-view-2.0.img');
      await run('debugfs', ['-R', `dump /images/2.0.img ${out}`, loop]);
      assert.equal(await sha256(out), await sha256(path.join(dev.images, '2.0.img')), 'the image GRUB would loop-mount is the migrated one');
      assert.ok(
        !(await fsp.readdir('/run/ibu').catch(() => [] as string[])).some((n) => n.includes(mnt.replace(/[^A-Za-z0-9]/g, '_'))),
        'no freeze marker left',
      );
    } finally {
      await dev.cleanup();
    }
  });
});

/** Fills the filesystem so exactly `free` bytes stay available. */
async function leaveFree(mnt: string, free: number): Promise<void> {
  const st = await fsp.statfs(mnt);
  const now = Number(st.bavail) * Number(st.bsize);
  assert.ok(now > free, `the test fs has ${now} bytes free, needs more than ${free}`);
  await run('fallocate', ['-l', String(now - free), path.join(mnt, `filler-${Date.now()}`)]);
}

async function neededFor(dev: Device, v: string): Promise<number> {
  const m = JSON.parse(await fsp.readFile(path.join(dev.storeDir, 'releases', v, 'manifest.json'), 'utf8')) as {
    chunks: Array<{ offset: number; size: number; zero?: true }>;
  };
  return bytesToAllocate(m.chunks, 4096);
}

test('nearly full host: the oldest unprotected image goes, or NO_SPACE and nothing is touched', async () => {
  await withHostFs(64, async (mnt) => {
    const dev = await makeDevice({
      running: '1.0',
      releases: [{ version: '0.9' }, { version: '1.0' }, { version: '2.0', payloadBytes: 3 * 1024 * 1024 }],
      installed: ['0.9', '1.0'],
      hostMount: mnt,
    });
    try {
      await dev.writeConfig({ space: { reserveBytes: 0, keepImages: 2 } });
      {
        const r0 = await cli(dev, ['init', '--default', '1.0']);
        assert.equal(r0.code, 0, r0.stderr);
      }
      const old = (await fsp.stat(path.join(dev.images, '0.9.img'))).blocks * 512;
      const need = await neededFor(dev, '2.0');
      // Not enough even after deleting 0.9: refused, nothing deleted.
      assert.ok(need - old > 1024 * 1024, `2.0 needs ${need} bytes, 0.9 frees ${old}`);
      await leaveFree(mnt, need - old - 512 * 1024);
      let r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
      assert.equal(r.code, 6, r.stderr);
      assert.equal((r.json!.error as { code: string }).code, 'NO_SPACE');
      assert.match((r.json!.error as { message: string }).message, /MiB short/);
      assert.ok(await fsp.stat(path.join(dev.images, '0.9.img')));
      assert.equal((await dev.env()).default_image, '1.0');
      // Free some (the operator deletes a filler): deleting 0.9 now suffices, and the running
      // and committed 1.0 stays.
      for (const f of await fsp.readdir(mnt)) if (f.startsWith('filler-')) await fsp.rm(path.join(mnt, f));
      await leaveFree(mnt, need - Math.floor(old / 2));
      r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(r.json!.removed, ['0.9.img']);
      assert.deepEqual((await fsp.readdir(dev.images)).filter((n) => n.endsWith('.img')).sort(), ['1.0.img', '2.0.img']);
      const s = await cli(dev, ['status', '--json']);
      assert.equal(s.json!.prepared, '2.0');
    } finally {
      await dev.cleanup();
    }
  });
});

test("the old image's /etc is read on a loop device of its own while the running image's loop device is held exclusively (dm-verity)", async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-oldimg-'));
  const img = path.join(dir, '2.0.img');
  let held = '';
  let fh: Awaited<ReturnType<typeof fsp.open>> | null = null;
  try {
    await fsp.mkdir(path.join(dir, 'tree/etc'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'tree/etc/hostname'), 'old-default\n');
    await fsp.writeFile(img, '');
    await fsp.truncate(img, 16 * 1024 * 1024);
    await run('mke2fs', ['-q', '-t', 'ext4', '-d', path.join(dir, 'tree'), img]);
    // the running image: a read-only loop device, opened O_EXCL as dm-verity's table holds it
    held = (await run('losetup', ['--find', '--show', '--read-only', img])).stdout.trim();
    fh = await fsp.open(held, fsConstants.O_RDONLY | fsConstants.O_EXCL);
    const got = await withImageMounted(img, path.join(dir, 'mnt'), (root) => fsp.readFile(path.join(root, 'etc/hostname'), 'utf8'), 'ro');
    assert.equal(got, 'old-default\n');
    const loops = (await run('losetup', ['-j', img])).stdout.trim().split('\n');
    assert.deepEqual(
      loops.map((l) => l.split(':')[0]),
      [held],
      'its own loop device is detached again',
    );
  } finally {
    await fh?.close();
    if (held) await run('losetup', ['-d', held], { allowFailure: true });
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
