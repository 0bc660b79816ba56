import { test, describe, before, after } from 'node:test';
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
const stores: Array<{ name: string; open: () => Promise<Store> }> = [
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
];

before(async () => {
  await writer.putChunk(id, stored);
  await writer.putFile('releases/1/manifest.json', Buffer.from('{"x":1}'));
  await writer.putFile('channels/stable.json', Buffer.from('{"versions":["1"]}'));
  await writer.flush();
});

after(async () => {
  for (const s of servers) await s.close();
  servers = [];
  rmSync(root, { recursive: true, force: true });
});

for (const impl of stores) {
  describe(`Store contract: ${impl.name}`, () => {
    let store: Store;
    before(async () => {
      store = await impl.open();
    });
    after(async () => {
      if (store instanceof HttpStore) await store.close();
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
      await writer.putChunk(wrongId, stored);
      await assert.rejects(v.getChunkData(wrongId), (e) => isIbuError(e, 'CHUNK_INVALID'));
      rmSync(path.join(root, chunkPath(wrongId)));
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
