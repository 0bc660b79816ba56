// test-needs: root (scripts/radosgw.sh runs Ceph daemons)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { readChannel } from '../../src/release/channel.js';
import { fetchRelease } from '../../src/release/fetch.js';
import { parseManifestUnverified } from '../../src/release/manifest.js';
import { publishRelease } from '../../src/release/publish.js';
import { manifestPath } from '../../src/store/layout.js';
import { generateKeys } from '../../src/release/keys.js';
import { Keyring } from '../../src/release/keyring.js';
import { HttpStore } from '../../src/store/http-store.js';
import { S3Store, S3_DEFAULT_IN_FLIGHT } from '../../src/store/s3-store.js';
import { runIbu } from '../helpers/cli.js';
import { dropBucket, newBucket, noS3, radosgw, type Radosgw } from '../helpers/radosgw.js';
import { buildImage, releaseTrees, tmpDir } from '../release/helpers.js';

// `ibu release publish|fetch|list|verify --store s3://...` against a real S3 server (radosgw,
// scripts/radosgw.sh), with the credentials in the usual AWS environment variables.
const t = tmpDir('s3rel');
const d = (p: string) => path.join(t.dir, p);
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
let gw: Radosgw | string;
let bucket = '';
let imgA = '';
let imgB = '';
let keyFile = '';
let url = '';

before(async () => {
  gw = await radosgw();
  if (typeof gw === 'string') return;
  bucket = await newBucket(gw, 'release', { publicRead: true });
  url = `s3://${bucket}/fleet-a`;
  const trees = releaseTrees();
  imgA = await buildImage(t.dir, 'a', trees.v1);
  imgB = await buildImage(t.dir, 'b', trees.v2);
  const k = await generateKeys(d('keys'));
  keyFile = k.privateKeyPath;
  mkdirSync(d('ring'));
  copyFileSync(k.publicKeyPath, d('ring/release.pub'));
});

after(async () => {
  if (typeof gw === 'object' && bucket) await dropBucket(gw, bucket);
  t.cleanup();
});

const ibu = (args: string[]) => runIbu(args, typeof gw === 'object' ? gw.env : {});
const skip = () => (typeof gw === 'string' ? gw : undefined);

test('publish two releases to s3://bucket/prefix; the second stores only its new chunks', async (tt) => {
  if (skip()) return noS3(tt, skip()!);
  const a = ibu([
    'release',
    'publish',
    '--image',
    imgA,
    '--version',
    '1.0',
    '--store',
    url,
    '--key',
    keyFile,
    '--no-kernel',
    '--chunk-size',
    '4K:16K:64K',
    '--json',
  ]);
  assert.equal(a.code, 0, a.stderr);
  const ra = JSON.parse(a.stdout.toString()) as { newChunks: number; chunks: number; zeroChunks: number };
  const b = ibu([
    'release',
    'publish',
    '--image',
    imgB,
    '--version',
    '2.0',
    '--store',
    url,
    '--key',
    keyFile,
    '--no-kernel',
    '--chunk-size',
    '4K:16K:64K',
    '--json',
  ]);
  assert.equal(b.code, 0, b.stderr);
  const rb = JSON.parse(b.stdout.toString()) as { newChunks: number; chunks: number };
  assert.ok(ra.newChunks > 0);
  assert.ok(rb.newChunks < rb.chunks / 2, `v2 stored ${rb.newChunks} of ${rb.chunks} chunks: dedup against v1 in the bucket`);
  // What is in the bucket is the directory store's layout, under the prefix.
  const s = new S3Store(url, (gw as Radosgw).options);
  try {
    assert.deepEqual(await s.list('releases'), ['1.0', '2.0']);
    // The one ListObjectsV2 pass publish dedups with (no HEAD per chunk) sees every chunk, with its HEAD size.
    const listed = await s.chunkSizes();
    assert.equal(listed.size, ra.newChunks + rb.newChunks);
    const [id, size] = [...listed][0]!;
    assert.equal(await s.chunkSize(id), size);
    assert.deepEqual(await s.list('releases/2.0'), ['manifest.json', 'manifest.json.zst']);
    assert.deepEqual(JSON.parse(Buffer.from(await s.getFile('channels/stable.json')).toString()).versions, ['1.0', '2.0']);
  } finally {
    await s.close();
  }
  const list = ibu(['release', 'list', '--from', url]);
  assert.equal(list.stdout.toString(), '1.0\n2.0\n');
  const ver = ibu(['release', 'verify', '--from', url, '--version', '2.0', '--keyring', d('ring')]);
  assert.equal(ver.code, 0, ver.stderr);
});

test('a downgrade is refused on S3 as on a directory, and nothing is written', async (tt) => {
  if (skip()) return noS3(tt, skip()!);
  const r = ibu(['release', 'publish', '--image', imgA, '--version', '1.5', '--store', url, '--key', keyFile, '--no-kernel']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /VERSION_DOWNGRADE/);
  const list = ibu(['release', 'list', '--from', url]);
  assert.equal(list.stdout.toString(), '1.0\n2.0\n');
});

test('fetch from s3:// rebuilds the image bit for bit, verified against the signed manifest', async (tt) => {
  if (skip()) return noS3(tt, skip()!);
  const r = ibu(['release', 'fetch', '--from', url, '--version', '2.0', '--keyring', d('ring'), '--out', d('b-s3.img'), '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sha(d('b-s3.img')), sha(imgB));
});

test("the bucket's own URL is a static HTTP store: devices and CDNs read chunks without S3 credentials", async (tt) => {
  if (skip()) return noS3(tt, skip()!);
  // A public-read bucket (GetObject for everyone; listing and writing still need the keys).
  const store = new HttpStore(`${(gw as Radosgw).endpoint}/${bucket}/fleet-a`);
  try {
    const r = await fetchRelease({ store, version: '2.0', keyring: await Keyring.load(d('ring')), out: d('b-http.img'), seeds: [imgA] });
    assert.equal(sha(d('b-http.img')), sha(imgB));
    assert.ok(r.reusedBytes > 0);
  } finally {
    await store.close();
  }
});

test('wrong credentials: publish fails with UNAUTHORIZED and a hint, exit status from docs/cli.md', async (tt) => {
  if (skip()) return noS3(tt, skip()!);
  const r = runIbu(['release', 'list', '--from', url], { ...(gw as Radosgw).env, AWS_SECRET_ACCESS_KEY: 'x'.repeat(40) });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /UNAUTHORIZED.*AWS_SECRET_ACCESS_KEY/s);
});

/** A publish whose connection breaks at the Nth chunk PUT (the PUTs before it reach radosgw). */
class CutShortStore extends S3Store {
  puts = 0;
  constructor(
    url: string,
    opts: ConstructorParameters<typeof S3Store>[1],
    private readonly failAt: number,
  ) {
    super(url, opts);
  }
  override async putChunk(id: string, data: Uint8Array): Promise<void> {
    if (++this.puts >= this.failAt) throw new Error(`connection reset (injected at PUT ${this.puts})`);
    return super.putChunk(id, data);
  }
}

test('a publish cut short leaves no channel or manifest pointing at missing chunks; the next publish completes and reuses what was stored', async (tt) => {
  if (skip()) return noS3(tt, skip()!);
  const cutUrl = `s3://${bucket}/cut-short`;
  const params = { min: 4096, avg: 16384, max: 65536 };
  const base = { keyFiles: [keyFile], requireKernel: false, params, threads: 1 };
  const good = new S3Store(cutUrl, (gw as Radosgw).options);
  try {
    assert.equal(good.inFlight, S3_DEFAULT_IN_FLIGHT, 'S3 keeps more requests in flight than a disk');
    await publishRelease({ ...base, image: imgA, version: '1.0', store: good });
    const before = await good.chunkSizes();
    const cut = new CutShortStore(cutUrl, (gw as Radosgw).options, 40);
    await assert.rejects(publishRelease({ ...base, image: imgB, version: '2.0', store: cut }), /connection reset \(injected/);
    await cut.close();
    const after = await good.chunkSizes();
    assert.ok(after.size > before.size, `PUTs before the cut reached the bucket (${before.size} -> ${after.size} chunks)`);
    // Chunks came first: no manifest and no channel entry for the cut release.
    assert.deepEqual((await readChannel(good, 'stable')).versions, ['1.0']);
    assert.deepEqual(await good.list('releases'), ['1.0']);
    const named = (m: Uint8Array) =>
      parseManifestUnverified(m)
        .chunks.filter((c) => !c.zero)
        .map((c) => c.id);
    for (const id of named(await good.getFile(manifestPath('1.0')))) assert.ok(after.has(id), `chunk ${id} of 1.0 is in the bucket`);
    // Publishing again completes; the chunks the cut publish stored are not sent twice.
    const again = await publishRelease({ ...base, image: imgB, version: '2.0', store: good });
    const end = await good.chunkSizes();
    assert.equal(again.newChunks, end.size - after.size, 'only the chunks the cut publish had not stored were written');
    assert.ok(after.size - before.size >= 30, 'the cut publish had stored chunks the second one reused');
    for (const id of named(await good.getFile(manifestPath('2.0')))) assert.ok(end.has(id), `chunk ${id} of 2.0 is in the bucket`);
    assert.deepEqual((await readChannel(good, 'stable')).versions, ['1.0', '2.0']);
  } finally {
    await good.close();
  }
});
