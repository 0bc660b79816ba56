/**
 * Host-side tests of the ZFS transport: everything that runs without a ZFS kernel module.
 *
 * MOCKED, because ZFS exists only inside the QEMU guest here: the `zfs` and `zpool` binaries are
 * replaced by small shell scripts (IBU_ZFS_BIN / IBU_ZPOOL_BIN) that answer `get guid`, `list`,
 * `status` and `send` from files in a temp dir, and the "streams" are synthetic byte strings with
 * a real DRR_BEGIN record in front. The product code around them is real: the signed manifest,
 * publish, stream verification, the agent's fallback decision, `ibu serve`'s route, queue, cache
 * and precompute over real HTTP. The real proof with real ZFS is test/zfs/zfs-transport.test.ts.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { compress } from 'zstd-napi';
import { isIbuError } from '../../src/errors.js';
import { exitCodeFor } from '../../src/cli/exit-codes.js';
import { generateKeys } from '../../src/release/keys.js';
import { Keyring } from '../../src/release/keyring.js';
import { parseAndVerifyManifest } from '../../src/release/manifest.js';
import { publishRelease } from '../../src/release/publish.js';
import type { Manifest, ManifestZfs } from '../../src/release/types.js';
import { LocalStore } from '../../src/store/local-store.js';
import { validateConfig } from '../../src/agent/config.js';
import { ImagesDir } from '../../src/agent/images-dir.js';
import { attempt, type DownloadDeps, type DownloadRequest } from '../../src/agent/transports/transport.js';
import { pruneSnapshots, zfsTransport } from '../../src/agent/transports/zfs.js';
import { ServerClient } from '../../src/agent/server-client.js';
import { manifestZfs } from '../../src/zfs/receive.js';
import { BEGIN_RECORD_BYTES, DMU_BACKUP_MAGIC, parseBegin, verifyStreamFile } from '../../src/zfs/stream.js';
import { exportZvol, writeImageToZvol } from '../../src/zfs/zvol.js';
import { createServer } from '../../src/server/index.js';
import { buildImage } from '../agent/device.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A synthetic send stream: a real DRR_BEGIN record (little endian) and a random body. */
function fakeStream(fromGuid: bigint, toGuid: bigint, bodyBytes: number, seed = 1): Buffer {
  const b = Buffer.alloc(BEGIN_RECORD_BYTES);
  b.writeUInt32LE(0, 0);
  b.writeBigUInt64LE(DMU_BACKUP_MAGIC, 8);
  b.writeBigUInt64LE(17n, 16);
  b.writeBigUInt64LE(1700000000n, 24);
  b.writeUInt32LE(3, 32);
  b.writeBigUInt64LE(toGuid, 40);
  b.writeBigUInt64LE(fromGuid, 48);
  b.write('rel/os@2', 56);
  const body = createHash('sha512').update(String(seed)).digest();
  const out = Buffer.alloc(bodyBytes);
  for (let i = 0; i < bodyBytes; i += body.length) body.copy(out, i);
  return Buffer.concat([b, out]);
}

let dir: string;
before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-zfs-units-'));
});
after(async () => {
  delete process.env.IBU_ZFS_BIN;
  delete process.env.IBU_ZPOOL_BIN;
  await fsp.rm(dir, { recursive: true, force: true });
});

describe('stream begin record and verification', () => {
  test('parses the DRR_BEGIN record in both byte orders and rejects non-streams', () => {
    const s = fakeStream(111n, 222n, 10);
    const b = parseBegin(s);
    assert.equal(b.fromGuid, '111');
    assert.equal(b.toGuid, '222');
    assert.equal(b.toName, 'rel/os@2');
    const be = Buffer.from(s);
    be.writeBigUInt64BE(DMU_BACKUP_MAGIC, 8);
    be.writeBigUInt64BE(222n, 40);
    be.writeBigUInt64BE(111n, 48);
    assert.equal(parseBegin(be).fromGuid, '111');
    assert.throws(
      () => parseBegin(randomBytes(400)),
      (e) => isIbuError(e, 'ZFS_STREAM_INVALID'),
    );
    assert.throws(
      () => parseBegin(s.subarray(0, 100)),
      (e) => isIbuError(e, 'ZFS_STREAM_TRUNCATED'),
    );
  });

  test('a good stream verifies; wrong base, truncated and tampered streams get their codes', async () => {
    const raw = fakeStream(111n, 222n, 3 << 20);
    const ref = { from: '1', fromGuid: '111', size: raw.length, sha256: sha(raw) };
    const good = path.join(dir, 'good.zst');
    await fsp.writeFile(good, compress(raw));
    await verifyStreamFile(good, ref, '222', '2');

    const wrong = path.join(dir, 'wrong.zst');
    await fsp.writeFile(wrong, compress(fakeStream(999n, 222n, 3 << 20)));
    await assert.rejects(verifyStreamFile(wrong, ref, '222', '2'), (e) => isIbuError(e, 'ZFS_WRONG_BASE'));

    // Cut short before compression (a sender that died) and the compressed file cut short.
    const cut = path.join(dir, 'cut.zst');
    await fsp.writeFile(cut, compress(raw.subarray(0, raw.length - 4096)));
    await assert.rejects(verifyStreamFile(cut, ref, '222', '2'), (e) => isIbuError(e, 'ZFS_STREAM_TRUNCATED'));
    const z = compress(raw);
    const cutz = path.join(dir, 'cutz.zst');
    await fsp.writeFile(cutz, z.subarray(0, Math.floor(z.length / 2)));
    await assert.rejects(
      verifyStreamFile(cutz, ref, '222', '2'),
      (e) => isIbuError(e) && (e.code === 'ZFS_STREAM_TRUNCATED' || e.code === 'ZFS_STREAM_INVALID'),
    );

    const t = Buffer.from(raw);
    t[2 << 20] ^= 0x40;
    const tam = path.join(dir, 'tampered.zst');
    await fsp.writeFile(tam, compress(t));
    await assert.rejects(verifyStreamFile(tam, ref, '222', '2'), (e) => isIbuError(e, 'ZFS_STREAM_INVALID'));
    assert.equal(exitCodeFor('ZFS_STREAM_INVALID'), 4);
    assert.equal(exitCodeFor('ZFS_POOL_FULL'), 6);
    assert.equal(exitCodeFor('ZFS_WRONG_BASE'), 4);
    assert.equal(exitCodeFor('ZFS_POOL_CORRUPT'), 7);
  });
});

describe('block-by-block zvol writes and sparse export (on a regular file standing in for the zvol)', () => {
  test('writes only the blocks that differ, zeroes blocks that became zero, exports sparse', async () => {
    const bs = 8192;
    const a = Buffer.alloc(64 * bs);
    for (let i = 0; i < 40; i++) a.fill(i + 1, i * bs, (i + 1) * bs);
    const b = Buffer.from(a);
    b.fill(0xee, 5 * bs, 6 * bs); // changed
    b.fill(0, 7 * bs, 8 * bs); // became zero
    b[20 * bs + 3] ^= 1; // one byte
    const ia = path.join(dir, 'a.img');
    const ib = path.join(dir, 'b.img');
    const vol = path.join(dir, 'zvol');
    await fsp.writeFile(ia, a);
    await fsp.writeFile(ib, b);
    await fsp.writeFile(vol, Buffer.alloc(a.length));
    const s1 = await writeImageToZvol(ia, vol, bs);
    assert.deepEqual(s1, { blocks: 64, unchanged: 24, written: 40, zeroed: 0 });
    const s2 = await writeImageToZvol(ib, vol, bs);
    assert.deepEqual(s2, { blocks: 64, unchanged: 61, written: 2, zeroed: 1 });
    assert.ok((await fsp.readFile(vol)).equals(b));
    const out = path.join(dir, 'exported.img');
    const ex = await exportZvol(vol, b.length, out);
    assert.equal(ex.sha256, sha(b));
    assert.ok((await fsp.readFile(out)).equals(b));
    const st = await fsp.stat(out);
    assert.ok(st.blocks * 512 < b.length, `the export is sparse (${st.blocks * 512} of ${b.length} bytes allocated)`);
    assert.equal(ex.dataBytes, 39 * bs);
    await assert.rejects(fsp.access(`${out}.partial`));
  });
});

describe('agent config', () => {
  test('transport zfs needs a dataset; every problem is listed; defaults', () => {
    assert.throws(
      () => validateConfig({ transport: 'zfs' }, 'agent.json'),
      (e) => isIbuError(e, 'CONFIG_INVALID') && /zfs.*dataset/.test(e.message),
    );
    assert.throws(
      () => validateConfig({ transport: 'zfs', zfs: { dataset: 'tank@1', fallbackToChunks: 'yes', colour: 1 } }, 'agent.json'),
      (e) => {
        const problems = (isIbuError(e) && (e.details?.problems as string[])) || [];
        return (
          problems.some((p) => p.includes('zfs.dataset')) &&
          problems.some((p) => p.includes('fallbackToChunks')) &&
          problems.some((p) => p.includes('zfs.colour'))
        );
      },
    );
    assert.throws(
      () => validateConfig({ transport: 'rsync' }, 'agent.json'),
      (e) => isIbuError(e, 'CONFIG_INVALID'),
    );
    const c = validateConfig({ transport: 'zfs', zfs: { dataset: 'tank/ibu/os' } }, 'agent.json');
    assert.equal(c.transport, 'zfs');
    assert.deepEqual(c.zfs, { dataset: 'tank/ibu/os', fallbackToChunks: true, waitSeconds: null });
    assert.equal(validateConfig({}, 'agent.json').transport, 'ibu');
  });
});

/** Fake zfs/zpool (see the header comment): guids in $D/guid.<dataset@snap>, streams in $D/send.<from>.<to>. */
async function fakeZfs(d: string): Promise<void> {
  await fsp.mkdir(d, { recursive: true });
  const zfs = `#!/bin/bash
D='${d}'
echo "$*" >> "$D/calls"
case "$1" in
  get) name="\${@: -1}"; prop="\${@: -2:1}"
       f="$D/$prop.\${name//\\//_}"
       if [ -f "$f" ]; then cat "$f"; else echo "cannot open '$name': dataset does not exist" >&2; exit 1; fi ;;
  list) [ -f "$D/list" ] && cat "$D/list"; exit 0 ;;
  destroy) echo "\${@: -1}" >> "$D/destroyed" ;;
  send) from="\${3#@}"; to="\${4##*@}"; cat "$D/send.$from.$to" ;;
  *) echo "fake zfs: unsupported $*" >&2; exit 2 ;;
esac
`;
  const zpool = `#!/bin/bash
case "$*" in
  "status -x "*) echo "pool '\${3}' is healthy" ;;
  *) echo "  state: ONLINE"; echo "errors: No known data errors" ;;
esac
`;
  await fsp.writeFile(path.join(d, 'zfs'), zfs, { mode: 0o755 });
  await fsp.writeFile(path.join(d, 'zpool'), zpool, { mode: 0o755 });
  process.env.IBU_ZFS_BIN = path.join(d, 'zfs');
  process.env.IBU_ZPOOL_BIN = path.join(d, 'zpool');
}

const setGuid = (d: string, name: string, guid: string): Promise<void> => fsp.writeFile(path.join(d, `guid.${name.replace(/\//g, '_')}`), `${guid}\n`);

describe('signed manifest, server route, agent fallback (fake zfs binary)', () => {
  let store: string;
  let keyring: string;
  let fz: string;
  let m2: Manifest;
  const stream = fakeStream(111n, 222n, 2 << 20, 5);
  before(async () => {
    fz = path.join(dir, 'fakezfs');
    await fakeZfs(fz);
    await fsp.writeFile(path.join(fz, 'send.1.2'), stream);
    await setGuid(fz, 'rel/os@1', '111');
    await setGuid(fz, 'rel/os@2', '222');
    const keys = path.join(dir, 'keys');
    await generateKeys(keys);
    keyring = path.join(dir, 'keyring');
    await fsp.mkdir(keyring);
    await fsp.copyFile(path.join(keys, 'signing.pub'), path.join(keyring, 'k.pub'));
    store = path.join(dir, 'store');
    const build = path.join(dir, 'build');
    await fsp.mkdir(build);
    for (const v of ['1', '2']) {
      const img = await buildImage(build, { version: v });
      await publishRelease({
        image: img,
        version: v,
        store: new LocalStore(store),
        keyFiles: [path.join(keys, 'signing.key')],
        requireKernel: false,
        fileMap: false,
        beforeSign: async ({ channelVersions }) => {
          assert.deepEqual(channelVersions, v === '1' ? [] : ['1']);
          const z: ManifestZfs = {
            dataset: 'rel/os',
            guid: v === '1' ? '111' : '222',
            volsize: 8 << 20,
            volblocksize: 8192,
            streams: v === '1' ? [] : [{ from: '1', fromGuid: '111', size: stream.length, sha256: sha(stream) }],
          };
          return { zfs: z };
        },
      });
    }
    const bytes = await fsp.readFile(path.join(store, 'releases', '2', 'manifest.json'));
    m2 = parseAndVerifyManifest(bytes, await Keyring.load(keyring)).manifest;
  });

  /** `ibu serve` on the store, building streams on demand (one attempt each), on a loopback port. */
  async function serveStore() {
    const { app, ctx } = await createServer({ dataDir: store, fleet: false, precompute: 0, retryAfterSeconds: 1, retry: { maxAttempts: 1 } });
    await app.listen({ host: '127.0.0.1', port: 0 });
    return { app, ctx, base: `http://127.0.0.1:${(app.server.address() as import('node:net').AddressInfo).port}` };
  }

  /** GET the 1 -> 2 stream until the server stops answering 202 (queued or building). */
  async function streamOnceBuilt(base: string): Promise<Response> {
    for (;;) {
      const res = await fetch(`${base}/v1/zfs-streams/1/2`);
      if (res.status !== 202) return res;
      await res.body?.cancel();
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  test('the zfs field is signed: changing a stream hash breaks the signature; malformed fields are refused', async () => {
    assert.equal(m2.zfs?.streams[0]?.sha256, sha(stream));
    assert.equal(manifestZfs(m2)?.guid, '222');
    const raw = JSON.parse(await fsp.readFile(path.join(store, 'releases', '2', 'manifest.json'), 'utf8')) as Manifest;
    raw.zfs!.streams[0]!.sha256 = sha(Buffer.from('evil'));
    const kr = await Keyring.load(keyring);
    assert.throws(
      () => parseAndVerifyManifest(Buffer.from(JSON.stringify(raw)), kr),
      (e) => isIbuError(e, 'SIGNATURE_INVALID'),
    );
    assert.throws(
      () => manifestZfs({ ...m2, zfs: { ...m2.zfs!, guid: 'x' } }),
      (e) => isIbuError(e, 'MANIFEST_INVALID'),
    );
    assert.throws(
      () => manifestZfs({ ...m2, zfs: { ...m2.zfs!, streams: [{ from: '1', fromGuid: '1', size: 0, sha256: 'a' }] } }),
      (e) => isIbuError(e, 'MANIFEST_INVALID'),
    );
  });

  test('ibu serve builds the stream on demand (202 + Retry-After, then 200, Range), checks it against the manifest, and precomputes it', async () => {
    const { app, ctx, base } = await serveStore();
    try {
      const first = await fetch(`${base}/v1/zfs-streams/1/2`);
      assert.equal(first.status, 202);
      assert.ok(Number(first.headers.get('retry-after')) >= 1);
      assert.match(String(((await first.json()) as { state: string }).state), /queued|building/);
      const res = await streamOnceBuilt(base);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'application/zstd');
      const body = Buffer.from(await res.arrayBuffer());
      const f = path.join(dir, 'served.zst');
      await fsp.writeFile(f, body);
      await verifyStreamFile(f, m2.zfs!.streams[0]!, '222', '2');
      const etag = res.headers.get('etag')!;
      const part = await fetch(`${base}/v1/zfs-streams/1/2`, { headers: { range: 'bytes=10-', 'if-range': etag } });
      assert.equal(part.status, 206);
      assert.ok(Buffer.from(await part.arrayBuffer()).equals(body.subarray(10)));
      // The same queue and cache as ibu deltas: one row, counted in the shared quota.
      const job = await ctx.deltas.jobs.get('zfs+1', '2');
      assert.equal(job?.state, 'ready');
      assert.equal(await ctx.deltas.cache.usedBytes(), job?.size);
      // No stream signed from 2 to 1 (nor any for 1): 404, and the device takes another route.
      assert.equal((await fetch(`${base}/v1/zfs-streams/2/1`)).status, 404);
      assert.equal((await fetch(`${base}/v1/zfs-streams/1/9`)).status, 404);
    } finally {
      await app.close();
    }
  });

  test('a stream that does not hash to the signed value is never served (500, failed build)', async () => {
    const tampered = Buffer.from(stream);
    tampered[1000] ^= 1;
    await fsp.writeFile(path.join(fz, 'send.1.2'), tampered);
    await fsp.rm(path.join(store, 'server.sqlite'), { force: true });
    await fsp.rm(path.join(store, 'cache'), { recursive: true, force: true });
    const { app, base } = await serveStore();
    try {
      const res = await streamOnceBuilt(base);
      assert.equal(res.status, 500);
      const b = (await res.json()) as { state: string; error: string };
      assert.equal(b.state, 'failed');
      assert.match(b.error, /signed manifest/);
    } finally {
      await app.close();
      await fsp.writeFile(path.join(fz, 'send.1.2'), stream);
    }
  });

  test('agent: no base snapshot → chunks by itself; stream not signed → ibu route; errors follow fallbackToChunks', async () => {
    const logs: string[] = [];
    const cfg = validateConfig({ transport: 'zfs', zfs: { dataset: 'dev/os' }, keyring, download: { store } }, 'agent.json');
    const req: DownloadRequest = {
      manifest: m2,
      out: path.join(dir, 'out.img'),
      from: { version: '1', image: '/nonexistent' },
      seeds: [],
      dir: new ImagesDir(dir),
      imageBytes: 0,
    };
    const deps: DownloadDeps = {
      cfg,
      server: new ServerClient('http://127.0.0.1:9', 'd', null),
      store: null,
      keyring: () => Keyring.load(keyring),
      log: (s: string) => logs.push(s),
    };
    const tryZfs = (r: DownloadRequest, d: DownloadDeps) => attempt(zfsTransport, { req: r, deps: d });
    // dev/os@1 does not exist on the device pool.
    assert.deepEqual(await tryZfs(req, deps), { pass: 'chunks' });
    assert.ok(
      logs.some((l) => /lacks the base snapshot/.test(l)),
      logs.join('\n'),
    );
    // A snapshot named 1 from another lineage (different GUID) is not the base either.
    await setGuid(fz, 'dev/os@1', '12345');
    assert.deepEqual(await tryZfs(req, deps), { pass: 'chunks' });
    assert.ok(logs.some((l) => /GUID 12345, not 111/.test(l)));
    // The release signs no stream from 0.9: the ibu route (deltas, chunks) decides.
    assert.deepEqual(await tryZfs({ ...req, from: { version: '0.9', image: '/x' } }, deps), { pass: 'next' });
    // A damaged pool: chunks by default, the error itself with fallbackToChunks false.
    await fsp.writeFile(
      path.join(fz, 'zpool'),
      '#!/bin/bash\necho "  pool: dev"; echo "  state: ONLINE"; echo "errors: 3 data errors, use \'-v\' for a list"\n',
      { mode: 0o755 },
    );
    assert.deepEqual(await tryZfs(req, deps), { pass: 'chunks' });
    const strict = {
      ...deps,
      cfg: validateConfig({ transport: 'zfs', zfs: { dataset: 'dev/os', fallbackToChunks: false }, keyring, download: { store } }, 'agent.json'),
    };
    await assert.rejects(tryZfs(req, strict), (e) => isIbuError(e, 'ZFS_POOL_CORRUPT'));
  });

  test('old snapshots are pruned by the disk policy: oldest first, never protected ones, never foreign ones', async () => {
    const M = 1 << 20;
    // name, guid, used, createtxg (as `zfs list -Hp -o name,guid,used,createtxg`)
    await fsp.writeFile(
      path.join(fz, 'list'),
      [
        'dev/os@1\t1\t' + 30 * M + '\t10',
        'dev/os@2\t2\t' + 30 * M + '\t20',
        'dev/os@manual\t9\t' + 50 * M + '\t25',
        'dev/os@3\t3\t' + 30 * M + '\t30',
        'dev/os@4\t4\t' + 30 * M + '\t40',
      ].join('\n') + '\n',
    );
    await fsp.writeFile(path.join(fz, 'available.dev_os'), `${10 * M}\n`);
    await fsp.rm(path.join(fz, 'destroyed'), { force: true });
    const logs: string[] = [];
    // running 3 (the stream's base), default 2, target 5; stream 20 MiB: wants 20 + 10 (".5") MiB free.
    const removed = await pruneSnapshots('dev/os', ['3', '2', '5'], 20 * M, (l) => logs.push(l));
    assert.deepEqual(removed, ['1']);
    assert.equal((await fsp.readFile(path.join(fz, 'destroyed'), 'utf8')).trim(), 'dev/os@1');
    // With room to spare nothing is destroyed.
    await fsp.writeFile(path.join(fz, 'available.dev_os'), `${500 * M}\n`);
    await fsp.rm(path.join(fz, 'destroyed'), { force: true });
    assert.deepEqual(await pruneSnapshots('dev/os', ['3'], 20 * M, () => {}), []);
    await fsp.rm(path.join(fz, 'list'));
  });
  test('precompute queues the stream beside the ibu delta for a new release', async () => {
    await fsp.rm(path.join(store, 'server.sqlite'), { force: true });
    await fsp.rm(path.join(store, 'cache'), { recursive: true, force: true });
    // workers 0: queue, build nothing, so the queued rows can be inspected.
    const { app, ctx } = await createServer({ dataDir: store, fleet: false, precompute: 3, workers: 0, adminToken: 'tok' });
    try {
      await app.ready();
      await ctx.precompute.scan();
      assert.equal((await ctx.deltas.jobs.get('1', '2'))?.state, 'queued');
      assert.equal((await ctx.deltas.jobs.get('zfs+1', '2'))?.state, 'queued');
      assert.equal((await ctx.deltas.jobs.get('zfs+1', '2'))?.priority, 10);
      // Deleting release 1 drops the streams from it as well as the deltas (last test using the store).
      const del = await app.inject({ method: 'DELETE', url: '/v1/admin/releases/1', headers: { authorization: 'Bearer tok' } });
      assert.equal(del.statusCode, 200);
      assert.equal(await ctx.deltas.jobs.get('zfs+1', '2'), undefined);
      assert.equal(await ctx.deltas.jobs.get('1', '2'), undefined);
    } finally {
      await app.close();
    }
  });
});
