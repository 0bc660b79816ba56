import { test, test as nodeTest, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chunkCompressor } from '../../src/chunk/compress.js';
import { chunkHasher } from '../../src/chunk/hash.js';
import { isIbuError } from '../../src/errors.js';
import { HttpStore } from '../../src/store/http-store.js';
import { chunkPath } from '../../src/store/layout.js';
import { LocalStore } from '../../src/store/local-store.js';
import type { Store } from '../../src/store/store.js';
import { VerifyingStore } from '../../src/store/verifying-store.js';
import { serveDir } from './serve-dir.js';
import { S3Store } from '../../src/store/s3-store.js';
import type { WriteStore } from '../../src/store/store.js';
import { dropBucket, newBucket, noS3, radosgw, type Radosgw } from '../helpers/radosgw.js';

// One store directory, written through LocalStore, read through every Store implementation.
const root = mkdtempSync(path.join(os.tmpdir(), 'ibu-store-contract-'));
const writer = new LocalStore(root);
const hash = chunkHasher('blake3');
const compress = chunkCompressor();
const plain = Buffer.from('hello chunk store '.repeat(500));
const id = hash(plain);
const stored = compress(plain);
const absent = 'f'.repeat(64);

let servers: Array<Awaited<ReturnType<typeof serveDir>>> = [];
let gw: Radosgw | string | undefined;
let bucket: string | undefined;
/** The fixtures every store reads: written through LocalStore into `root`, or through S3Store into a bucket. */
async function writeFixtures(w: WriteStore): Promise<void> {
  await w.putChunk(id, stored);
  await w.putFile('releases/1/manifest.json', Buffer.from('{"x":1}'));
  await w.putFile('channels/stable.json', Buffer.from('{"versions":["1"]}'));
}
interface Impl {
  name: string;
  open: () => Promise<Store>;
  /** Where the tamper test writes a chunk under the wrong id, and removes it again. */
  writer?: () => WriteStore & { deleteFile?: (rel: string) => Promise<void> };
  skip?: () => string | undefined;
}
const stores: Impl[] = [
  { name: 'LocalStore', open: async () => new LocalStore(root) },
  {
    name: 'HttpStore (static layout)',
    open: async () => {
      const s = await serveDir(root);
      servers.push(s);
      return new HttpStore(s.url + '/');
    },
  },
  {
    name: 'HttpStore (api layout)',
    open: async () => {
      const s = await serveDir(root, { layout: 'api' });
      servers.push(s);
      return new HttpStore(s.url + '/v1');
    },
  },
  {
    // A real S3 server (Ceph radosgw, scripts/radosgw.sh), never an imitation.
    name: 'S3Store (radosgw)',
    skip: () => (typeof gw === 'string' ? gw : undefined),
    open: async () => s3Store(),
    writer: () => s3Store(),
  },
];

function s3Store(): S3Store {
  if (typeof gw !== 'object' || !bucket) throw new Error('radosgw is not running');
  return new S3Store(`s3://${bucket}/some/prefix`, gw.options);
}

before(async () => {
  await writeFixtures(writer);
  await writer.flush();
  gw = await radosgw();
  if (typeof gw === 'object') {
    bucket = await newBucket(gw, 'contract');
    const w = s3Store();
    await writeFixtures(w);
    await w.close();
  }
});

after(async () => {
  if (typeof gw === 'object' && bucket) await dropBucket(gw, bucket);
  for (const s of servers) await s.close();
  servers = [];
  rmSync(root, { recursive: true, force: true });
});

for (const impl of stores) {
  describe(`Store contract: ${impl.name}`, () => {
    let store: Store;
    before(async () => {
      if (impl.skip?.()) return;
      store = await impl.open();
    });
    after(async () => {
      await (store as { close?: () => Promise<void> } | undefined)?.close?.();
    });
    const test = (name: string, fn: () => Promise<void>) =>
      nodeTest(name, async (t) => {
        const why = impl.skip?.();
        if (why) return noS3(t, why);
        await fn();
      });

    test('getChunk returns the stored bytes', async () => {
      assert.deepEqual(Buffer.from(await store.getChunk(id)), stored);
    });
    test('hasChunk is true for a stored chunk and false for an absent one', async () => {
      assert.equal(await store.hasChunk(id), true);
      assert.equal(await store.hasChunk(absent), false);
    });
    test('an absent chunk is CHUNK_MISSING', async () => {
      await assert.rejects(store.getChunk(absent), (e) => isIbuError(e, 'CHUNK_MISSING'));
    });
    test('getFile reads manifests and channels; an absent file is NOT_FOUND', async () => {
      assert.equal(Buffer.from(await store.getFile('releases/1/manifest.json')).toString(), '{"x":1}');
      assert.equal(Buffer.from(await store.getFile('channels/stable.json')).toString(), '{"versions":["1"]}');
      await assert.rejects(store.getFile('releases/9/manifest.json'), (e) => isIbuError(e, 'NOT_FOUND'));
    });
    test('malformed ids and escaping paths are refused before any I/O', async () => {
      await assert.rejects(store.getChunk('../../etc/passwd'), (e) => isIbuError(e, 'BAD_REQUEST'));
      await assert.rejects(store.getFile('../outside'), (e) => isIbuError(e, 'BAD_REQUEST'));
      await assert.rejects(store.getFile('/etc/passwd'), (e) => isIbuError(e, 'BAD_REQUEST'));
    });
    test('VerifyingStore over it returns verified plain bytes, and rejects a tampered copy', async () => {
      const v = new VerifyingStore(store, 'blake3');
      const got = await v.getChunkData(id, plain.length);
      assert.deepEqual(got.data, plain);
      assert.equal(got.storedBytes, stored.length);
      // A chunk stored under the wrong id (tampering, or a bug) is CHUNK_INVALID.
      const wrongId = hash(Buffer.from('something else'));
      const w: WriteStore & { deleteFile?: (rel: string) => Promise<void> } = impl.writer?.() ?? writer;
      await w.putChunk(wrongId, stored);
      await assert.rejects(v.getChunkData(wrongId), (e) => isIbuError(e, 'CHUNK_INVALID'));
      if (w === writer) rmSync(path.join(root, chunkPath(wrongId)));
      else {
        await w.deleteFile!(chunkPath(wrongId));
        await (w as { close?: () => Promise<void> }).close?.();
      }
    });
  });
}

test('LocalStore writes chunks at content-addressed paths, atomically, and putChunk is idempotent', async () => {
  const p = path.join(root, chunkPath(id));
  assert.ok(p.endsWith(`chunks/${id.slice(0, 4)}/${id}.zst`));
  await writer.putChunk(id, stored); // no-op
  const leftovers = readdirSync(path.dirname(p)).filter((n) => n.endsWith('.tmp'));
  assert.deepEqual(leftovers, []);
});

test('every store refuses a chunk larger than the caller allows, before reading it (issue #15)', async () => {
  for (const s of stores) {
    if (s.skip?.()) continue;
    const store = await s.open();
    await assert.rejects(store.getChunk(id, undefined, stored.length - 1), (e) => isIbuError(e, 'CHUNK_INVALID'), s.name);
    assert.deepEqual(Buffer.from(await store.getChunk(id, undefined, stored.length)), stored, s.name);
    await (store as { close?: () => Promise<void> }).close?.();
  }
});

test('HttpStore retries 503 with backoff and then succeeds', async () => {
  const s = await serveDir(root, { fail503: 2 });
  const store = new HttpStore(s.url, { backoffMs: 5 });
  try {
    assert.deepEqual(Buffer.from(await store.getChunk(id)), stored);
    assert.equal(store.retries, 2);
    assert.equal(s.requests.length, 3);
  } finally {
    await store.close();
    await s.close();
  }
});

test('HttpStore gives up with STORE_UNAVAILABLE when the server keeps failing or is down', async () => {
  const s = await serveDir(root, { fail503: 100 });
  const store = new HttpStore(s.url, { backoffMs: 1, attempts: 3 });
  try {
    await assert.rejects(store.getChunk(id), (e) => isIbuError(e, 'STORE_UNAVAILABLE'));
    assert.equal(s.requests.length, 3);
  } finally {
    await store.close();
    await s.close();
  }
  const dead = new HttpStore(s.url, { backoffMs: 1, attempts: 2 }); // the port is closed now
  try {
    await assert.rejects(dead.getChunk(id), (e) => isIbuError(e, 'STORE_UNAVAILABLE'));
  } finally {
    await dead.close();
  }
});

test('a file written to LocalStore is replaced atomically', async () => {
  await writer.putFile('channels/x.json', Buffer.from('one'));
  await writer.putFile('channels/x.json', Buffer.from('two'));
  assert.equal(Buffer.from(await writer.getFile('channels/x.json')).toString(), 'two');
  assert.deepEqual(
    readdirSync(path.join(root, 'channels')).filter((n) => n.endsWith('.tmp')),
    [],
  );
  writeFileSync(path.join(root, 'channels', 'x.json'), 'three');
});

test('batch durability: chunks from a writer that died before flush are verified and torn ones removed', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-store-crash-'));
  try {
    const good = Buffer.from('good chunk '.repeat(100));
    const goodId = hash(good);
    const tornId = hash(Buffer.from('torn chunk'));
    const s1 = new LocalStore(dir, { durability: 'batch' });
    await s1.putChunk(goodId, compress(good));
    await s1.putChunk(tornId, compress(Buffer.from('torn chunk')));
    // Simulate the crash: the writer (a dead pid) never flushed, and one file lost its data.
    const { renameSync, truncateSync: trunc } = await import('node:fs');
    renameSync(path.join(dir, `.unflushed-${process.pid}`), path.join(dir, '.unflushed-999999999'));
    trunc(path.join(dir, chunkPath(tornId)), 3);
    const s2 = new LocalStore(dir, { durability: 'batch' });
    assert.equal(await s2.repairAfterCrash(), 1);
    assert.equal(await s2.hasChunk(goodId), true);
    assert.equal(await s2.hasChunk(tornId), false);
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.startsWith('.unflushed')),
      [],
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('S3Store specifics (radosgw)', () => {
  const t = (name: string, fn: (g: Radosgw) => Promise<void>) =>
    test(name, async (tt) => {
      if (typeof gw !== 'object') return noS3(tt, typeof gw === 'string' ? gw : 'radosgw not started');
      await fn(gw);
    });
  t('list and statFile see what publish wrote; a PUT replaces a file whole (new ETag)', async () => {
    const s = s3Store();
    try {
      assert.deepEqual(await s.list('channels'), ['stable.json']);
      assert.deepEqual(await s.list('releases'), ['1']);
      assert.deepEqual(await s.list('nothing-here'), []);
      const before = await s.statFile('channels/stable.json');
      assert.equal(before?.size, '{"versions":["1"]}'.length);
      await s.putFile('channels/stable.json', Buffer.from('{"versions":["1","2"]}'));
      const after2 = await s.statFile('channels/stable.json');
      assert.notEqual(after2?.etag, before?.etag);
      assert.equal(Buffer.from(await s.getFile('channels/stable.json')).toString(), '{"versions":["1","2"]}');
      await s.putFile('channels/stable.json', Buffer.from('{"versions":["1"]}'));
      assert.equal(await s.statFile('releases/9/manifest.json'), undefined);
    } finally {
      await s.close();
    }
  });
  t('the prefix keeps stores apart: the same bucket without it has none of these files', async (g) => {
    const bare = new S3Store(`s3://${bucket}`, g.options);
    try {
      assert.equal(await bare.hasChunk(id), false);
      assert.deepEqual(await bare.list('channels'), []);
    } finally {
      await bare.close();
    }
  });
  t('wrong credentials are UNAUTHORIZED, a missing bucket NOT_FOUND, a dead endpoint STORE_UNAVAILABLE', async (g) => {
    const bad = new S3Store(`s3://${bucket}/some/prefix`, { ...g.options, secretAccessKey: 'wrong'.repeat(8), maxAttempts: 1 });
    const nob = new S3Store(`s3://no-such-bucket-${Date.now()}/x`, { ...g.options, maxAttempts: 1 });
    const dead = new S3Store(`s3://${bucket}/x`, { ...g.options, endpoint: 'http://127.0.0.1:9', maxAttempts: 2 });
    try {
      await assert.rejects(bad.getChunk(id), (e) => isIbuError(e, 'UNAUTHORIZED'));
      await assert.rejects(nob.getFile('channels/stable.json'), (e) => isIbuError(e, 'NOT_FOUND') || isIbuError(e, 'STORE_UNAVAILABLE'));
      await assert.rejects(dead.getChunk(id), (e) => isIbuError(e, 'STORE_UNAVAILABLE'));
    } finally {
      await Promise.all([bad.close(), nob.close(), dead.close()]);
    }
  });
  t('bad s3:// URLs are USAGE errors', async () => {
    for (const u of ['s3://', 's3://UPPER/x', 's3://b/../x'])
      assert.throws(
        () => new S3Store(u),
        (e) => isIbuError(e, 'USAGE') || isIbuError(e, 'BAD_REQUEST'),
        u,
      );
  });
});
