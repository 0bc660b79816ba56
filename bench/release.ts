/**
 * Releases and chunks benchmark (docs/benchmarks.md, "## Releases and chunks").
 *
 *   npm run bench:release            # IBU_BENCH_IMAGES=/var/cache/ibu-bench/images RUNS=3
 *
 * Inputs: base.img and security.img (a Debian image and its security update, the second built
 * with --previous). Measures, in one run and beside casync with the same chunk sizes:
 *   1. chunk-size sweep: bytes fetched for security.img seeded with base.img, manifest size;
 *   2. chunk-id hash: BLAKE3 vs sha256 over the image's chunks;
 *   3. publish MB/s (cold store) vs `casync make`; fetch MB/s from a local store and over
 *      HTTP loopback vs `casync extract`, median of RUNS.
 */
import { createServer, type Server } from 'node:http';
import { copyFileSync, createReadStream, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync, closeSync, openSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { chunkFile } from '../src/chunk/chunker.js';
import { chunkHasher } from '../src/chunk/hash.js';
import { fetchRelease, type FetchResult } from '../src/release/fetch.js';
import { generateKeys } from '../src/release/keys.js';
import { Keyring } from '../src/release/keyring.js';
import { publishRelease, type PublishResult } from '../src/release/publish.js';
import { HttpStore } from '../src/store/http-store.js';
import { LocalStore } from '../src/store/local-store.js';
import { run } from '../src/util/exec.js';

const IMAGES = process.env.IBU_BENCH_IMAGES ?? '/var/cache/ibu-bench/images';
const RUNS = Number(process.env.RUNS ?? 3);
const WORK = process.env.IBU_BENCH_WORK ?? path.join('/var/tmp', `ibu-bench-release-${process.pid}`);
const SIZES = (process.env.AVGS ?? '16,32,64,128').split(',').map((k) => Number(k) * 1024);
const CHOSEN = Number(process.env.CHOSEN_AVG ?? 64) * 1024;
const base = path.join(IMAGES, 'base.img');
const sec = path.join(IMAGES, 'security.img');
const w = (p: string) => path.join(WORK, p);
const MB = 1e6;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
function sh(cmd: string, args: string[]): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr?.toString()}`);
  return (performance.now() - t0) / 1000;
}
/** Async variant: needed while this process also serves HTTP to the child. */
async function shAsync(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  await run(cmd, args);
  return (performance.now() - t0) / 1000;
}
function dropCaches(): void {
  // Not dropping the page cache: both tools read the same warm inputs in the same run.
}
function rm(p: string): void {
  rmSync(p, { recursive: true, force: true });
}
function sizeOfTree(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true }))
    if (e.isFile()) n += statSync(path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name)).size;
  return n;
}

/** A static file server that counts the body bytes it sends (the wire bytes a client fetched). */
async function serve(root: string): Promise<{ url: string; bytes: () => number; reset: () => void; close: () => Promise<void> }> {
  let bytes = 0;
  const server: Server = createServer((req, res) => {
    const rel = decodeURIComponent((req.url ?? '/').split('?')[0]!).replace(/^\/+/, '');
    const file = path.join(root, rel);
    if (!file.startsWith(root) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const size = statSync(file).size;
    res.writeHead(200, { 'content-length': size });
    if (req.method === 'HEAD') return res.end();
    bytes += size;
    createReadStream(file).pipe(res);
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    bytes: () => bytes,
    reset: () => (bytes = 0),
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

interface Row {
  avg: number;
  ours: { fetched: number; manifest: number; manifestPlain: number; chunks: number; indexChunks: number; fetchedOffsetOnly: number; seedSeconds: number };
  casync: { fetched: number; index: number; chunks: number };
}

async function main(): Promise<void> {
  for (const f of [base, sec]) if (!existsSync(f)) throw new Error(`${f} is missing: build the bench images first (see docs/benchmarks.md)`);
  rm(WORK);
  mkdirSync(WORK, { recursive: true });
  const k = await generateKeys(w('keys'));
  mkdirSync(w('ring'));
  copyFileSync(k.publicKeyPath, w('ring/k.pub'));
  const ring = await Keyring.load(w('ring'));
  const imgSize = statSync(sec).size;
  const out: Record<string, unknown> = {
    machine: `${os.cpus().length} cores, ${os.cpus()[0]?.model}, ${os.type()} ${os.release()}, node ${process.version}`,
    images: { base: statSync(base).size, security: imgSize },
    runs: RUNS,
  };
  console.log(out);

  if (process.env.ONLY_PUBLISH) {
    // Publish (cold store) vs casync make, alternating, median of RUNS.
    const params = { min: CHOSEN / 4, avg: CHOSEN, max: CHOSEN * 4 };
    const pub: number[] = [];
    const make: number[] = [];
    for (let r = 0; r < RUNS; r++) {
      rm(w('cold'));
      const t0 = performance.now();
      await publishRelease({ image: sec, version: '2', store: new LocalStore(w('cold')), keyFiles: [k.privateKeyPath], params, requireKernel: false });
      pub.push((performance.now() - t0) / 1000);
      rm(w('cold'));
      rm(w('cold-cas'));
      make.push(sh('casync', ['make', `--store=${w('cold-cas')}`, `--chunk-size=${params.min}:${params.avg}:${params.max}`, w('cold.caibx'), sec]));
      rm(w('cold-cas'));
      console.log('run', r, { pub: pub[r], make: make[r] });
    }
    out.publish = {
      params,
      publish: { medianSeconds: median(pub), MBps: imgSize / MB / median(pub), runs: pub },
      casyncMake: { medianSeconds: median(make), MBps: imgSize / MB / median(make), runs: make },
    };
    console.log(JSON.stringify(out, null, 1));
    writeFileSync(process.env.IBU_BENCH_OUT ?? path.join(os.tmpdir(), 'ibu-bench-release.json'), JSON.stringify(out, null, 1));
    if (!process.env.KEEP) rm(WORK);
    return;
  }

  // 1. hash choice, on the chosen chunking of security.img
  {
    const fd = openSync(sec, 'r');
    const chunks: Buffer[] = [];
    for (const p of chunkFile(fd, imgSize, { min: CHOSEN / 4, avg: CHOSEN, max: CHOSEN * 4 })) if (!p.zero) chunks.push(Buffer.from(p.data));
    closeSync(fd);
    const bytes = chunks.reduce((s, c) => s + c.length, 0);
    const res: Record<string, number> = {};
    for (const h of ['blake3', 'sha256']) {
      const f = chunkHasher(h);
      const ts: number[] = [];
      for (let r = 0; r < RUNS; r++) {
        const t0 = performance.now();
        for (const c of chunks) f(c);
        ts.push((performance.now() - t0) / 1000);
      }
      res[h] = bytes / MB / median(ts);
    }
    // Chunking alone (FastCDC + zero detection), for reference.
    const ts: number[] = [];
    for (let r = 0; r < RUNS; r++) {
      const fd2 = openSync(sec, 'r');
      const t0 = performance.now();
      let n = 0;
      for (const p of chunkFile(fd2, imgSize, { min: CHOSEN / 4, avg: CHOSEN, max: CHOSEN * 4 })) n += p.size;
      ts.push((performance.now() - t0) / 1000);
      closeSync(fd2);
      void n;
    }
    out.hashMBps = { ...res, chunkBytes: bytes, chunkingImageMBps: imgSize / MB / median(ts) };
    console.log('hash', out.hashMBps);
  }

  // 2. chunk-size sweep: bytes to fetch security.img seeded with base.img, ours vs casync
  const rows: Row[] = [];
  for (const avg of process.env.SKIP_SWEEP ? [CHOSEN] : SIZES) {
    const params = { min: avg / 4, avg, max: avg * 4 };
    const store = w(`store-${avg}`);
    await publishRelease({ image: base, version: '1', store: new LocalStore(store), keyFiles: [k.privateKeyPath], params, requireKernel: false });
    const pr = await publishRelease({ image: sec, version: '2', store: new LocalStore(store), keyFiles: [k.privateKeyPath], params, requireKernel: false });
    const r = await fetchRelease({ store: new LocalStore(store), version: '2', keyring: ring, out: w('o.img'), seeds: [base] });
    rm(w('o.img'));
    const ro = await fetchRelease({ store: new LocalStore(store), version: '2', keyring: ring, out: w('o.img'), seeds: [base], seedScan: 'offset' });
    rm(w('o.img'));
    const cstore = w(`castore-${avg}`);
    const cs = `--chunk-size=${params.min}:${params.avg}:${params.max}`;
    sh('casync', ['make', `--store=${cstore}`, cs, w(`base-${avg}.caibx`), base]);
    sh('casync', ['make', `--store=${cstore}`, cs, w(`sec-${avg}.caibx`), sec]);
    const srv = await serve(cstore);
    await shAsync('casync', ['extract', `--store=${srv.url}/`, `--seed=${base}`, w(`sec-${avg}.caibx`), w('c.img')]);
    const casBytes = srv.bytes();
    await srv.close();
    rm(w('c.img'));
    const row: Row = {
      avg,
      ours: {
        fetched: r.downloadedBytes,
        manifest: r.manifestBytes,
        manifestPlain: pr.manifestBytes,
        chunks: r.downloadedChunks,
        indexChunks: pr.chunks,
        fetchedOffsetOnly: ro.downloadedBytes,
        seedSeconds: r.seconds,
      },
      casync: { fetched: casBytes + statSync(w(`sec-${avg}.caibx`)).size, index: statSync(w(`sec-${avg}.caibx`)).size, chunks: -1 },
    };
    rows.push(row);
    console.log('sweep', JSON.stringify(row), 'seconds ours seed', r.seconds.toFixed(2));
    if (avg !== CHOSEN) {
      rm(store);
      rm(cstore);
    }
  }
  out.sweep = rows;
  out.fullImage = { bytes: imgSize, storedSecurity: undefined };

  // 3. speed at the chosen size, median of RUNS, anchors in the same run
  if (process.env.SKIP_SPEED) {
    writeFileSync(process.env.IBU_BENCH_OUT ?? path.join(os.tmpdir(), 'ibu-bench-release.json'), JSON.stringify(out, null, 1));
    console.log(JSON.stringify(out, null, 1));
    if (!process.env.KEEP) rm(WORK);
    return;
  }
  const params = { min: CHOSEN / 4, avg: CHOSEN, max: CHOSEN * 4 };
  const cs = `--chunk-size=${params.min}:${params.avg}:${params.max}`;
  const pub: number[] = [];
  const make: number[] = [];
  const fetchLocal: number[] = [];
  const extractLocal: number[] = [];
  const fetchHttp: number[] = [];
  const extractHttp: number[] = [];
  const fetchFull: number[] = [];
  let fullBytes = 0;
  let pubRes: PublishResult | undefined;
  for (let r = 0; r < RUNS; r++) {
    dropCaches();
    rm(w('cold'));
    const t0 = performance.now();
    pubRes = await publishRelease({ image: sec, version: '2', store: new LocalStore(w('cold')), keyFiles: [k.privateKeyPath], params, requireKernel: false });
    pub.push((performance.now() - t0) / 1000);
    rm(w('cold'));
    rm(w('cold-cas'));
    make.push(sh('casync', ['make', `--store=${w('cold-cas')}`, cs, w('cold.caibx'), sec]));
    out.coldStoreBytes = { ours: pubRes.newStoredBytes, casync: sizeOfTree(w('cold-cas')) };
    rm(w('cold-cas'));

    const store = w(`store-${CHOSEN}`);
    const cstore = w(`castore-${CHOSEN}`);
    let t = performance.now();
    const fr: FetchResult = await fetchRelease({ store: new LocalStore(store), version: '2', keyring: ring, out: w('o.img'), seeds: [base] });
    fetchLocal.push((performance.now() - t) / 1000);
    void fr;
    rm(w('o.img'));
    extractLocal.push(sh('casync', ['extract', `--store=${cstore}`, `--seed=${base}`, w(`sec-${CHOSEN}.caibx`), w('c.img')]));
    rm(w('c.img'));

    const srv = await serve(store);
    const hs = new HttpStore(srv.url, { connections: 8 });
    t = performance.now();
    await fetchRelease({ store: hs, version: '2', keyring: ring, out: w('o.img'), seeds: [base], concurrency: 8 });
    fetchHttp.push((performance.now() - t) / 1000);
    rm(w('o.img'));
    t = performance.now();
    const full = await fetchRelease({ store: hs, version: '2', keyring: ring, out: w('o.img'), concurrency: 8 });
    fetchFull.push((performance.now() - t) / 1000);
    fullBytes = full.downloadedBytes;
    rm(w('o.img'));
    await hs.close();
    await srv.close();
    const csrv = await serve(cstore);
    extractHttp.push(await shAsync('casync', ['extract', `--store=${csrv.url}/`, `--seed=${base}`, w(`sec-${CHOSEN}.caibx`), w('c.img')]));
    await csrv.close();
    rm(w('c.img'));
    console.log('run', r, {
      pub: pub[r],
      make: make[r],
      fetchLocal: fetchLocal[r],
      extractLocal: extractLocal[r],
      fetchHttp: fetchHttp[r],
      extractHttp: extractHttp[r],
      fetchFull: fetchFull[r],
    });
  }
  const mbps = (xs: number[]) => ({ medianSeconds: median(xs), MBps: imgSize / MB / median(xs), runs: xs });
  out.speed = {
    chosen: params,
    publish: mbps(pub),
    casyncMake: mbps(make),
    fetchLocalSeeded: mbps(fetchLocal),
    casyncExtractLocalSeeded: mbps(extractLocal),
    fetchHttpSeeded: mbps(fetchHttp),
    casyncExtractHttpSeeded: mbps(extractHttp),
    fetchHttpNoSeed: { ...mbps(fetchFull), downloadedBytes: fullBytes },
    publishResult: pubRes,
  };
  console.log(JSON.stringify(out, null, 1));
  const file = process.env.IBU_BENCH_OUT ?? path.join(os.tmpdir(), 'ibu-bench-release.json');
  writeFileSync(file, JSON.stringify(out, null, 1));
  console.log(`results in ${file}`);
  if (!process.env.KEEP) rm(WORK);
  void createHash;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
