/**
 * Publish and fetch throughput on S3 (a real radosgw, scripts/radosgw.sh) beside the directory
 * store, in the same run (docs/benchmarks.md, "## Releases on S3").
 *
 *   npm run bench:s3        # RUNS=3 BENCH_TREE=/usr/lib/gcc BENCH_IMAGE_MIB=256
 *
 * Input: an ext4 image made with mke2fs -d from BENCH_TREE (compiled binaries: compressible, like
 * a root filesystem). Each run publishes it to a fresh directory store and a fresh S3 prefix, then
 * fetches it back (no seed) from each. Reports MB/s of image size, median of RUNS, and the load.
 * "S3at8" is the same bucket with a disk's in-flight counts (publish 8 + 4 x threads, fetch 8:
 * what S3 had before it kept 32 in flight), so the change is measured in the same run.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fetchRelease } from '../src/release/fetch.js';
import { generateKeys } from '../src/release/keys.js';
import { Keyring } from '../src/release/keyring.js';
import { diskWriteConcurrency, publishRelease } from '../src/release/publish.js';
import { LocalStore } from '../src/store/local-store.js';
import { S3Store } from '../src/store/s3-store.js';
import type { Store, WriteStore } from '../src/store/store.js';
import { dropBucket, newBucket, radosgw } from '../test/helpers/radosgw.js';

const RUNS = Number(process.env.RUNS ?? 3);
const TREE = process.env.BENCH_TREE ?? '/usr/lib/gcc';
const MIB = Number(process.env.BENCH_IMAGE_MIB ?? 256);
const WORK = path.join('/var/tmp', `ibu-bench-s3-${process.pid}`);
const w = (p: string) => path.join(WORK, p);
const MB = 1e6;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

async function main(): Promise<void> {
  const gw = await radosgw();
  if (typeof gw === 'string') throw new Error(gw);
  mkdirSync(WORK, { recursive: true });
  const img = w('bench.img');
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', TREE, '-E', 'root_owner=0:0', img, `${MIB}M`]);
  const size = statSync(img).size;
  const keys = await generateKeys(w('keys'));
  mkdirSync(w('ring'));
  copyFileSync(keys.publicKeyPath, w('ring/release.pub'));
  const ring = await Keyring.load(w('ring'));
  const bucket = await newBucket(gw, 'bench');
  const loadBefore = load();
  const t: Record<string, number[]> = { publishDir: [], publishS3: [], publishS3at8: [], fetchDir: [], fetchS3: [], fetchS3at8: [] };
  const diskPublish = diskWriteConcurrency();
  let stored = 0;
  try {
    for (let r = 0; r < RUNS; r++) {
      const stores: Array<[string, () => WriteStore & Store, number | undefined, number | undefined]> = [
        ['Dir', () => new LocalStore(w(`store-${r}`)), undefined, undefined],
        ['S3', () => new S3Store(`s3://${bucket}/run-${r}`, gw.options), undefined, undefined],
        ['S3at8', () => new S3Store(`s3://${bucket}/run8-${r}`, gw.options), diskPublish, 8],
      ];
      for (const [name, open, writeConcurrency, concurrency] of stores) {
        const s = open();
        const t0 = performance.now();
        const p = await publishRelease({ image: img, version: '1.0', store: s, keyFiles: [keys.privateKeyPath], requireKernel: false, writeConcurrency });
        t[`publish${name}`]!.push((performance.now() - t0) / 1000);
        stored = p.newStoredBytes;
        const t1 = performance.now();
        await fetchRelease({ store: s, version: '1.0', keyring: ring, out: w(`out-${name}.img`), concurrency });
        t[`fetch${name}`]!.push((performance.now() - t1) / 1000);
        rmSync(w(`out-${name}.img`), { force: true });
        await (s as { close?: () => Promise<void> }).close?.();
      }
      rmSync(w(`store-${r}`), { recursive: true, force: true });
    }
  } finally {
    await dropBucket(gw, bucket).catch(() => undefined);
    rmSync(WORK, { recursive: true, force: true });
  }
  const mbps = (k: string) => +(size / MB / median(t[k]!)).toFixed(1);
  const out = {
    input: { tree: TREE, imageBytes: size, storedBytes: stored, runs: RUNS },
    machine: { cpus: os.cpus().length, loadBefore, loadAfter: load() },
    seconds: t,
    mbPerS: Object.fromEntries(Object.keys(t).map((k) => [k, mbps(k)])),
  };
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
