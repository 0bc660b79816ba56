/**
 * dm-verity at publish (src/image/verity.ts, issue #22): the real veritysetup appends the tree to
 * the image file, the signed manifest carries root hash, salt and sizes, the chunks cover the tree,
 * republishing is deterministic, and the kernel's dm-verity over a loop device returns an I/O
 * error for a file whose byte was flipped on disk. Needs veritysetup (cryptsetup-bin); the
 * kernel part needs root (loop, device-mapper).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';
import { generateKeys } from '../../src/release/keys.js';
import { publishRelease } from '../../src/release/publish.js';
import { validateManifest } from '../../src/release/manifest.js';
import { LocalStore } from '../../src/store/local-store.js';
import { verifyVerityTree } from '../../src/image/verity.js';
import { seededBytes } from '../helpers/ext4-images.js';

const noTool = existsSync('/usr/sbin/veritysetup') || existsSync('/sbin/veritysetup') ? false : 'veritysetup missing: run scripts/install-deps.sh';
const isRoot = process.getuid?.() === 0;
/** Some kernels (this sandbox's) have no device-mapper: the QEMU e2e (test/e2e/verity.test.ts) proves dm-verity in the guest's kernel then. */
const noDm = (() => {
  try {
    return readFileSync('/proc/misc', 'utf8').includes('device-mapper')
      ? false
      : 'the running kernel has no device-mapper (test/e2e/verity.test.ts proves this in QEMU)';
  } catch {
    return 'no /proc/misc';
  }
})();
const MIB = 1024 * 1024;
const IMAGE_MIB = 128;

async function image(dir: string): Promise<string> {
  const tree = path.join(dir, 'tree');
  await fsp.mkdir(path.join(tree, 'usr/lib'), { recursive: true });
  await fsp.writeFile(path.join(tree, 'usr/lib/payload.bin'), seededBytes(3 * MIB, 11));
  await fsp.writeFile(path.join(tree, 'usr/lib/secret.conf'), 'answer=42\n'.repeat(500));
  const img = path.join(dir, 'v.img');
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, img, `${IMAGE_MIB}M`]);
  return img;
}

const sha = async (f: string): Promise<string> =>
  createHash('sha256')
    .update(await fsp.readFile(f))
    .digest('hex');

test('publish --verity: tree appended (≤ 0.8 % of the image), signed root hash, chunks cover it, deterministic', { skip: noTool }, async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-verity-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  await generateKeys(path.join(dir, 'keys'));
  const img = await image(dir);
  const store = new LocalStore(path.join(dir, 'store'));
  const r = await publishRelease({
    image: img,
    version: '1.0',
    store,
    keyFiles: [path.join(dir, 'keys/signing.key')],
    requireKernel: false,
    verity: true,
  });
  const v = r.verity!;
  assert.equal(v.hashOffset, IMAGE_MIB * MIB);
  assert.equal(v.dataBlocks, (IMAGE_MIB * MIB) / 4096);
  assert.equal((await fsp.stat(img)).size, v.hashOffset + v.treeBytes);
  assert.ok(v.treeBytes / v.hashOffset <= 0.008, `tree is ${((100 * v.treeBytes) / v.hashOffset).toFixed(3)} % of the image`);
  const m = JSON.parse(await fsp.readFile(path.join(dir, 'store/releases/1.0/manifest.json'), 'utf8'));
  assert.deepEqual(m.verity, v);
  assert.equal(m.image.size, v.hashOffset + v.treeBytes, 'the chunks and the image sha256 cover the tree');
  assert.equal(m.image.sha256, await sha(img));
  await verifyVerityTree(img, v);

  // republishing the same file as the same version: the tree is replaced by identical bytes
  const before = await sha(img);
  const r2 = await publishRelease({ image: img, version: '1.1', store, keyFiles: [path.join(dir, 'keys/signing.key')], requireKernel: false, verity: true });
  assert.notEqual(r2.verity!.rootHash, v.rootHash, 'another version, another salt');
  assert.equal((await fsp.stat(img)).size, v.hashOffset + v.treeBytes, 'the old tree was cut, not kept');
  await fsp.truncate(img, v.hashOffset);
  const { appendVerityTree } = await import('../../src/image/verity.js');
  const again = await appendVerityTree(img, { product: 'ibu', version: '1.0' });
  assert.deepEqual(again, v);
  assert.equal(await sha(img), before, 'same image, product and version: the same bytes');

  // a manifest whose verity fields are not strict hex / do not add up is refused
  for (const bad of [{ rootHash: 'x'.repeat(64) }, { salt: '$(reboot)' }, { treeBytes: v.treeBytes + 1 }, { hashOffset: 4096 }])
    assert.throws(() => validateManifest({ ...m, verity: { ...m.verity, ...bad } }), /verity .* is invalid/);

  // one flipped byte in the data: veritysetup verify fails with the stable code
  const fd = await fsp.open(img, 'r+');
  await fd.write(Buffer.from([0xff]), 0, 1, 1024 + 100);
  await fd.close();
  await assert.rejects(verifyVerityTree(img, v), (e: Error & { code?: string }) => e.code === 'VERITY_MISMATCH');
});

test(
  'dm-verity over a loop device: a flipped byte in a file on disk reads as an I/O error; a wrong root hash does not open',
  { skip: noTool || (!isRoot && 'needs root') || noDm },
  async (t) => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-verity-dm-'));
    const name = `ibu-test-${process.pid}`;
    const mnt = path.join(dir, 'mnt');
    let loop = '';
    t.after(async () => {
      spawnSync('umount', [mnt]);
      spawnSync('veritysetup', ['close', name]);
      if (loop) spawnSync('losetup', ['-d', loop]);
      await fsp.rm(dir, { recursive: true, force: true });
    });
    await generateKeys(path.join(dir, 'keys'));
    const img = await image(dir);
    const r = await publishRelease({
      image: img,
      version: '1.0',
      store: new LocalStore(path.join(dir, 'store')),
      keyFiles: [path.join(dir, 'keys/signing.key')],
      requireKernel: false,
      verity: true,
    });
    const v = r.verity!;
    // flip one byte inside secret.conf's first block, on disk
    const blk = Number(
      execFileSync('debugfs', ['-R', 'bmap /usr/lib/secret.conf 0', img], { stdio: ['ignore', 'pipe', 'ignore'] })
        .toString()
        .trim(),
    );
    assert.ok(blk > 0);
    const fd = await fsp.open(img, 'r+');
    await fd.write(Buffer.from('X'), 0, 1, blk * 4096 + 7);
    await fd.close();

    loop = execFileSync('losetup', ['-f', '--show', '-r', img]).toString().trim();
    const wrong = spawnSync('veritysetup', ['open', loop, name, loop, '0'.repeat(64), `--hash-offset=${v.hashOffset}`]);
    assert.notEqual(wrong.status, 0, 'a wrong root hash must not open');
    assert.match(wrong.stderr.toString(), /[Vv]erification of root hash failed|root hash/);

    execFileSync('veritysetup', ['open', loop, name, loop, v.rootHash, `--hash-offset=${v.hashOffset}`]);
    await fsp.mkdir(mnt);
    execFileSync('mount', ['-t', 'ext4', '-o', 'ro', `/dev/mapper/${name}`, mnt]);
    assert.equal((await fsp.readFile(path.join(mnt, 'usr/lib/payload.bin'))).length, 3 * MIB, 'intact files read fine');
    await assert.rejects(fsp.readFile(path.join(mnt, 'usr/lib/secret.conf')), /EIO/);
  },
);
