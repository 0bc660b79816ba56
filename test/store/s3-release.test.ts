// test-needs: root (scripts/radosgw.sh runs Ceph daemons)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { fetchRelease } from '../../src/release/fetch.js';
import { generateKeys } from '../../src/release/keys.js';
import { Keyring } from '../../src/release/keyring.js';
import { HttpStore } from '../../src/store/http-store.js';
import { S3Store } from '../../src/store/s3-store.js';
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
