import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { chunkCompressor } from '../../src/chunk/compress.js';
import { compress as zstdCompress } from 'zstd-napi';
import { isIbuError } from '../../src/errors.js';
import { fetchRelease, type FetchOptions } from '../../src/release/fetch.js';
import { generateKeys } from '../../src/release/keys.js';
import { Keyring } from '../../src/release/keyring.js';
import { publishRelease } from '../../src/release/publish.js';
import type { Manifest } from '../../src/release/types.js';
import { HttpStore } from '../../src/store/http-store.js';
import { chunkPath } from '../../src/store/layout.js';
import { LocalStore } from '../../src/store/local-store.js';
import { run } from '../../src/util/exec.js';
import { serveDir } from '../store/serve-dir.js';
import { buildImage, releaseTrees, tmpDir } from './helpers.js';

const PARAMS = { min: 4096, avg: 16384, max: 65536 };
const t = tmpDir('pubfetch');
const d = (p: string) => path.join(t.dir, p);
let imgA = '';
let imgB = '';
let keyFile = '';
let ring: Keyring;
let m2: Manifest;

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
const storeDir = d('store');

before(async () => {
  const trees = releaseTrees();
  imgA = await buildImage(t.dir, 'a', trees.v1);
  imgB = await buildImage(t.dir, 'b', trees.v2);
  const k = await generateKeys(d('keys'));
  keyFile = k.privateKeyPath;
  mkdirSync(d('ring'));
  copyFileSync(k.publicKeyPath, d('ring/release.pub'));
  ring = await Keyring.load(d('ring'));
  const store = new LocalStore(storeDir);
  await publishRelease({ image: imgA, version: '1', store, keyFiles: [keyFile], params: PARAMS });
  await publishRelease({ image: imgB, version: '2', store, keyFiles: [keyFile], params: PARAMS });
  m2 = JSON.parse(readFileSync(path.join(storeDir, 'releases/2/manifest.json'), 'utf8')) as Manifest;
});

after(() => t.cleanup());

/** A private copy of the store to damage. */
function storeCopy(name: string): string {
  const dir = d(`store-${name}`);
  cpSync(storeDir, dir, { recursive: true });
  return dir;
}

function fetchTo(name: string, o: Partial<FetchOptions> = {}) {
  return fetchRelease({ store: new LocalStore(storeDir), version: '2', keyring: ring, out: d(`${name}.img`), ...o });
}

function assertNothingLeft(name: string, partialKept: boolean) {
  assert.equal(existsSync(d(`${name}.img`)), false, 'no output image after a failure');
  assert.equal(existsSync(d(`${name}.img.partial`)), partialKept);
}

test('the manifest describes the image: chunks, zero runs, file map, kernel and initrd', () => {
  assert.equal(m2.version, '2');
  assert.equal(m2.channel, 'stable');
  assert.equal(m2.image.size, statSync(imgB).size);
  assert.equal(m2.image.sha256, sha(imgB));
  assert.deepEqual(
    { ...m2.chunking, level: undefined, gear: undefined, normalization: undefined, zeroRunMin: undefined },
    {
      algorithm: 'fastcdc',
      ...PARAMS,
      hash: 'blake3',
      compression: 'zstd',
      level: undefined,
      gear: undefined,
      normalization: undefined,
      zeroRunMin: undefined,
    },
  );
  assert.ok(
    m2.chunks.some((c) => c.zero),
    'free space is recorded as zero runs',
  );
  assert.equal(m2.kernel, '/boot/vmlinuz-6.1.0-1-amd64');
  assert.equal(m2.initrd, '/boot/initrd.img-6.1.0-1-amd64');
  const app = m2.files.find((f) => f.path === '/usr/bin/app')!;
  assert.equal(app.type, 'file');
  assert.ok(app.extents!.length >= 1);
  const link = m2.files.find((f) => f.path === '/vmlinuz')!;
  assert.equal(link.target, 'boot/vmlinuz-6.1.0-1-amd64');
  // No zero chunk is stored; every data chunk is, at its content address.
  for (const c of m2.chunks) {
    if (c.zero) continue;
    assert.equal(statSync(path.join(storeDir, chunkPath(c.id))).size, c.csize);
  }
  assert.deepEqual(JSON.parse(readFileSync(path.join(storeDir, 'channels/stable.json'), 'utf8')).versions, ['1', '2']);
});

test('fetch with a seed reuses most bytes, downloads the rest, and writes the exact image, sparse', async () => {
  const r = await fetchTo('seeded', { seeds: [imgA] });
  assert.equal(sha(d('seeded.img')), sha(imgB));
  assert.ok(r.reusedBytes > 0 && r.reusedChunks > 0);
  const full = await fetchTo('unseeded');
  assert.equal(sha(d('unseeded.img')), sha(imgB));
  assert.equal(full.reusedBytes, 0);
  assert.ok(r.downloadedBytes < full.downloadedBytes / 3, `seeded ${r.downloadedBytes} vs full ${full.downloadedBytes}`);
  // Sparse: the zero runs were never written.
  const st = statSync(d('seeded.img'));
  assert.ok(st.blocks * 512 < st.size / 2, `allocated ${st.blocks * 512} of ${st.size}`);
  assert.equal(existsSync(d('seeded.img.partial.journal')), false);
});

test('publish refuses equal or lower versions on a channel (VERSION_DOWNGRADE), allows them on another channel', async () => {
  const store = new LocalStore(storeDir);
  for (const v of ['1.9', '2', '0.1']) {
    await assert.rejects(publishRelease({ image: imgA, version: v, store, keyFiles: [keyFile], params: PARAMS }), (e) => isIbuError(e, 'VERSION_DOWNGRADE'), v);
  }
  const r = await publishRelease({ image: imgA, version: '1.5', store, keyFiles: [keyFile], params: PARAMS, channel: 'lts' });
  assert.equal(r.newChunks, 0, 'every chunk of a known image is already stored');
  assert.equal(existsSync(path.join(storeDir, 'channels/stable.lock')), false);
});

test('publish refuses a version equal to a distinct published one (2.0, 02 beside 2) on any channel: VERSION_AMBIGUOUS', async () => {
  const store = new LocalStore(storeDir);
  for (const v of ['2.0', '02', '1.0']) {
    await assert.rejects(
      publishRelease({ image: imgA, version: v, store, keyFiles: [keyFile], params: PARAMS, channel: 'other' }),
      (e) => isIbuError(e, 'VERSION_AMBIGUOUS'),
      v,
    );
  }
});

test('publish without a kernel is IMAGE_NO_KERNEL unless --no-kernel', async () => {
  const img = await buildImage(t.dir, 'nokernel', { files: { 'etc/hostname': 'x\n' }, kernel: false }, 8);
  const store = new LocalStore(d('store-nk'));
  await assert.rejects(publishRelease({ image: img, version: '1', store, keyFiles: [keyFile], params: PARAMS }), (e) => isIbuError(e, 'IMAGE_NO_KERNEL'));
  const r = await publishRelease({ image: img, version: '1', store, keyFiles: [keyFile], params: PARAMS, requireKernel: false });
  assert.equal(r.version, '1');
});

test('a tampered chunk is CHUNK_INVALID; no output image appears and the partial stays for resume', async () => {
  const dir = storeCopy('tampered');
  const victim = m2.chunks.find((c) => !c.zero)!;
  writeFileSync(path.join(dir, chunkPath(victim.id)), chunkCompressor()(Buffer.alloc(victim.size, 0x41)));
  await assert.rejects(fetchTo('tampered', { store: new LocalStore(dir) }), (e) => isIbuError(e, 'CHUNK_INVALID'));
  assertNothingLeft('tampered', true);
});

test('a truncated chunk is CHUNK_TRUNCATED', async () => {
  const dir = storeCopy('truncated');
  const victim = m2.chunks.find((c) => !c.zero && (c.csize ?? 0) > 100)!;
  truncateSync(path.join(dir, chunkPath(victim.id)), Math.floor(victim.csize! / 2));
  await assert.rejects(fetchTo('truncated', { store: new LocalStore(dir) }), (e) => isIbuError(e, 'CHUNK_TRUNCATED'));
  assertNothingLeft('truncated', true);
});

test("a chunk file holding another chunk's bytes is CHUNK_INVALID (hash mismatch), not CHUNK_TRUNCATED", async () => {
  const dir = storeCopy('swapped');
  const real = m2.chunks.filter((c) => !c.zero && (c.csize ?? 0) > 100).sort((a, b) => b.size - a.size);
  const [victim, other] = [real[0]!, real[real.length - 1]!];
  assert.ok(other.size < victim.size);
  writeFileSync(path.join(dir, chunkPath(victim.id)), readFileSync(path.join(dir, chunkPath(other.id))));
  await assert.rejects(
    fetchTo('swapped', { store: new LocalStore(dir) }),
    (e) => isIbuError(e, 'CHUNK_INVALID') && /does not match/.test((e as Error).message),
  );
});

test('a missing chunk is CHUNK_MISSING', async () => {
  const dir = storeCopy('missing');
  const victim = m2.chunks.find((c) => !c.zero)!;
  rmSync(path.join(dir, chunkPath(victim.id)));
  await assert.rejects(fetchTo('missing', { store: new LocalStore(dir) }), (e) => isIbuError(e, 'CHUNK_MISSING'));
  assertNothingLeft('missing', true);
});

test('a tampered manifest (plain or compressed copy) is SIGNATURE_INVALID before anything is written', async () => {
  const dir = storeCopy('badmanifest');
  const f = path.join(dir, 'releases/2/manifest.json');
  const m = JSON.parse(readFileSync(f, 'utf8')) as Manifest;
  m.kernel = '/boot/evil';
  // The compressed copy is what fetch reads first.
  writeFileSync(`${f}.zst`, zstdCompress(Buffer.from(JSON.stringify(m))));
  await assert.rejects(fetchTo('badmanifest', { store: new LocalStore(dir) }), (e) => isIbuError(e, 'SIGNATURE_INVALID'));
  assertNothingLeft('badmanifest', false);
  assert.equal(existsSync(d('badmanifest.img.partial.journal')), false);
  // Without the compressed copy, the plain one is read.
  rmSync(`${f}.zst`);
  writeFileSync(f, JSON.stringify(m));
  await assert.rejects(fetchTo('badmanifest', { store: new LocalStore(dir) }), (e) => isIbuError(e, 'SIGNATURE_INVALID'));
  assertNothingLeft('badmanifest', false);
  // A damaged compressed copy is MANIFEST_INVALID, not silently ignored.
  writeFileSync(`${f}.zst`, 'garbage');
  await assert.rejects(fetchTo('badmanifest', { store: new LocalStore(dir) }), (e) => isIbuError(e, 'MANIFEST_INVALID'));
});

test('a keyring without the signing key is KEY_UNKNOWN; with it revoked, KEY_REVOKED', async () => {
  const other = await generateKeys(d('otherkey'));
  mkdirSync(d('ring-unknown'));
  copyFileSync(other.publicKeyPath, d('ring-unknown/other.pub'));
  await assert.rejects(fetchTo('unknown', { keyring: await Keyring.load(d('ring-unknown')) }), (e) => isIbuError(e, 'KEY_UNKNOWN'));
  assertNothingLeft('unknown', false);
  cpSync(d('ring'), d('ring-revoked'), { recursive: true });
  writeFileSync(d('ring-revoked/revoked'), `${m2.signatures[0]!.keyId}\n`);
  await assert.rejects(fetchTo('revoked', { keyring: await Keyring.load(d('ring-revoked')) }), (e) => isIbuError(e, 'KEY_REVOKED'));
  assertNothingLeft('revoked', false);
});

test('an unknown version is RELEASE_NOT_FOUND', async () => {
  await assert.rejects(fetchRelease({ store: new LocalStore(storeDir), version: '7', keyring: ring, out: d('nf.img') }), (e) =>
    isIbuError(e, 'RELEASE_NOT_FOUND'),
  );
});

test('an interrupted fetch resumes from its partial and journal, fetching only what is missing', async () => {
  const ac = new AbortController();
  let chunksSeen = 0;
  const store = new LocalStore(storeDir);
  const slow = {
    location: store.location,
    getFile: store.getFile.bind(store),
    hasChunk: store.hasChunk.bind(store),
    getChunk: async (id: string, signal?: AbortSignal) => {
      if (++chunksSeen === 60) ac.abort(new Error('interrupted by the test'));
      if (signal?.aborted) throw signal.reason;
      return store.getChunk(id);
    },
  };
  await assert.rejects(
    fetchRelease({ store: slow, version: '2', keyring: ring, out: d('resume.img'), signal: ac.signal, concurrency: 2, commitEveryBytes: 1 }),
  );
  assertNothingLeft('resume', true);
  const journal = readFileSync(d('resume.img.partial.journal'), 'utf8').trim().split('\n');
  assert.ok(journal.length > 20, `journal has ${journal.length - 1} chunks`);
  const r = await fetchRelease({ store, version: '2', keyring: ring, out: d('resume.img') });
  assert.equal(r.resumed, true);
  assert.ok(r.resumedChunks >= journal.length - 1);
  assert.ok(r.downloadedChunks < m2.chunks.filter((c) => !c.zero).length - 20);
  assert.equal(sha(d('resume.img')), sha(imgB));
  assert.equal(existsSync(d('resume.img.partial')), false);
  assert.equal(existsSync(d('resume.img.partial.journal')), false);
});

test('fetch over HTTP (static files and the /v1 API layout) with a seed', async () => {
  for (const layout of ['static', 'api'] as const) {
    const s = await serveDir(storeDir, { layout });
    const store = new HttpStore(layout === 'api' ? `${s.url}/v1` : s.url, { connections: 4 });
    try {
      const r = await fetchRelease({ store, version: '2', keyring: ring, out: d(`http-${layout}.img`), seeds: [imgA], concurrency: 4 });
      assert.equal(sha(d(`http-${layout}.img`)), sha(imgB));
      assert.equal(s.requests.filter((q) => q.includes('chunks')).length, r.downloadedChunks);
      assert.ok(s.requests.every((q) => (layout === 'api' ? q.includes('/v1/') : !q.includes('/v1/'))));
    } finally {
      await store.close();
      await s.close();
    }
  }
});

test('disk full mid-fetch is NO_SPACE, and neither an image nor a partial is left behind', async (tt) => {
  // CI runs as root and can mount: there the test must run, never skip.
  if (process.getuid?.() !== 0 && !process.env.CI) return tt.skip('needs root to mount a small tmpfs');
  const mnt = d('tiny');
  mkdirSync(mnt);
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'ibu-rel-enospc', mnt]);
  } catch (err) {
    if (process.env.CI) throw err;
    return tt.skip(`cannot mount a tmpfs here: ${(err as Error).message}`);
  }
  try {
    // The pre-download space check refuses at once...
    await assert.rejects(fetchRelease({ store: new LocalStore(storeDir), version: '2', keyring: ring, out: path.join(mnt, 'o.img') }), (e) =>
      isIbuError(e, 'NO_SPACE'),
    );
    assert.deepEqual(readdirSync(mnt), []);
    // ...and without it the real ENOSPC from a write in the middle is caught the same way.
    await assert.rejects(fetchRelease({ store: new LocalStore(storeDir), version: '2', keyring: ring, out: path.join(mnt, 'o.img'), spaceCheck: false }), (e) =>
      isIbuError(e, 'NO_SPACE'),
    );
    assert.deepEqual(readdirSync(mnt), []);
  } finally {
    await run('umount', [mnt]);
  }
});
