/**
 * The ZFS transport end to end, in one QEMU guest (TCG) with Debian's kernel and the ZFS modules
 * (test/zfs/harness.ts): real zpool/zfs on virtio disks and file vdevs, `ibu zfs publish` writing
 * the release zvol block by block, `ibu serve` building the `zfs send -i` stream on demand on
 * 127.0.0.1, and the real `upgradectl` (transport zfs) receiving, exporting, verifying, setting the
 * trial boot and confirming. Then the failure cases (wrong base, truncated, tampered, full pool,
 * corrupted pool) and the fallback to chunks. One boot; the guest script is
 * test/zfs/zfs-transport-guest.sh and prints `IBU-ZFS-T <name> PASS|FAIL <detail>` lines.
 * Nothing is mocked; the boot itself (GRUB) is replaced by editing grubenv as GRUB would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { seededBytes } from '../helpers/ext4-images.js';
import { buildImage } from '../agent/device.js';
import { repoRoot, runScenarioGuest, signingKeyring, zfsUnavailable } from './harness.js';

/** Every check the guest script prints; each must PASS. */
const CHECKS = [
  'pools',
  'workdisk',
  'publish-1',
  'publish-2',
  'publish-block-diff',
  'manifest-zfs',
  'send-deterministic',
  'serve-up',
  'provisioned',
  'happy-prepare',
  'happy-202',
  'happy-received',
  'happy-method',
  'happy-snapshot',
  'happy-image',
  'happy-staging-clean',
  'happy-try',
  'happy-confirm',
  'cache-file',
  'wrong-base',
  'wrong-base-untouched',
  'truncated',
  'truncated-untouched',
  'tampered',
  'tampered-untouched',
  'running-image-hash',
  'pool-full',
  'pool-full-untouched',
  'scrub-found-errors',
  'pool-corrupt',
  'pool-corrupt-untouched',
  'fallback-chunks',
  'fallback-image',
  'total',
];

test('zfs transport in a QEMU guest: publish, serve on demand, upgrade 1 -> 2, failure cases, fallback', { timeout: 30 * 60_000 }, async (t) => {
  const why = zfsUnavailable();
  if (why) {
    t.skip(why);
    return;
  }
  const repo = repoRoot();
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-zfs-transport-'));
  const share = path.join(work, 'share');
  await fsp.mkdir(share);
  try {
    // Two small real ext4 images: 2 changes a few files and adds 4 MiB; most blocks stay put.
    const build = path.join(work, 'build');
    await fsp.mkdir(build);
    const common = { sizeMiB: 64, payloadBytes: 12 << 20 };
    const i1 = await buildImage(build, { version: '1', ...common, files: { '/etc/motd': 'release 1\n' } });
    const i2 = await buildImage(build, {
      version: '2',
      ...common,
      files: { '/etc/motd': 'release 2\n', '/usr/lib/new-in-2.bin': seededBytes(3 << 20, 42).toString('base64') },
    });
    await fsp.rename(i1, path.join(share, '1.img'));
    await fsp.rename(i2, path.join(share, '2.img'));
    // The 8 KiB volume blocks publish 2 must write (and zero), counted independently of src/zfs.
    const [a, b] = await Promise.all([fsp.readFile(path.join(share, '1.img')), fsp.readFile(path.join(share, '2.img'))]);
    let differing = 0;
    let zeroed = 0;
    for (let o = 0; o < b.length; o += 8192) {
      if (a.compare(b, o, o + 8192, o, o + 8192) === 0) continue;
      differing++;
      if (b.subarray(o, o + 8192).every((x) => x === 0)) zeroed++;
    }
    await fsp.writeFile(path.join(share, 'expected-diff'), `${differing} ${zeroed}\n`);
    await signingKeyring(path.join(share, 'keys'), path.join(share, 'keyring'));

    const script = await fsp.readFile(path.join(repo, 'test', 'zfs', 'zfs-transport-guest.sh'), 'utf8');
    const t0 = Date.now();
    const r = await runScenarioGuest(work, { releaseMiB: 512, deviceMiB: 512, workMiB: 2048 }, { script, share, timeoutMs: 25 * 60_000, env: { REPO: repo } });
    t.diagnostic(`guest run ${((Date.now() - t0) / 1000).toFixed(0)} s, exit ${String(r.exitCode)}${r.timedOut ? ' (timed out)' : ''}; log ${r.logFile}`);
    const lines = r.log.split('\n').filter((l) => l.startsWith('IBU-ZFS-T '));
    for (const l of lines) t.diagnostic(l);
    const result = new Map<string, string>();
    for (const l of lines) {
      const [, name, status] = l.split(' ');
      if (name && status) result.set(name, status);
    }
    const failed = CHECKS.filter((c) => result.get(c) !== 'PASS');
    if (failed.length > 0) {
      // Keep the evidence: the work dir is left for inspection when something failed.
      await fsp.copyFile(r.logFile, path.join(os.tmpdir(), `ibu-zfs-transport-${Date.now()}.log`)).catch(() => undefined);
    }
    assert.deepEqual(
      failed,
      [],
      `checks not passed: ${failed.map((c) => `${c}=${result.get(c) ?? 'missing'}`).join(', ')}\n${r.log.split('\n').slice(-80).join('\n')}`,
    );
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
});
