/**
 * Fuzzing the ext4 reader: thousands of seeded mutations of real mke2fs images (superblock,
 * group descriptors, inode tables, directory blocks, extent tree blocks, random places,
 * truncation), each opened, walked and read completely. The only acceptable failure is
 * IbuError IMAGE_INVALID (IMAGE_PATH_NOT_FOUND too for lookups of fixed paths). The loop runs
 * in a worker thread so that a hang (a synchronous endless loop) is caught by the main
 * thread's deadline instead of stalling the test run; the last seed is reported, and a mutant
 * that fails is kept under $TMPDIR/ibu-ext4-fuzz-failures/ for replay with Ext4Reader.open.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { IbuError } from '../../src/errors.js';
import { debugfs, makeTree, mkfs, parseStatBlocks, setTreeTimes, tempDir } from '../helpers/ext4-images.js';
import { standardTree } from '../helpers/ext4-trees.js';

const MUTATIONS_PER_IMAGE = 900;
const DEADLINE_MS = 150_000;
const MiB = 1024 * 1024;

interface FuzzImage {
  name: string;
  file: string;
  regions: Array<[number, number]>; // byte ranges worth mutating: [start, end)
}

interface Report {
  iterations: number;
  invalid: number;
  clean: number;
  failures: string[];
}

// ---- worker side ----

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const INTERESTING = [0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x8000, 0x7fffffff, 0x80000000, 0xffffffff, 12, 4096, 32768, 0xf30a];

function mutate(orig: Buffer, img: FuzzImage, rnd: () => number): Buffer {
  const pick = (n: number) => Math.floor(rnd() * n);
  const kind = pick(10);
  if (kind === 0) return Buffer.from(orig.subarray(0, pick(orig.length))); // truncation
  const buf = Buffer.from(orig);
  const rounds = 1 + pick(4);
  for (let k = 0; k < rounds; k++) {
    // Mostly in the metadata regions, sometimes anywhere.
    const [start, end] = rnd() < 0.9 ? img.regions[pick(img.regions.length)]! : [0, buf.length];
    const at = start + pick(Math.max(1, end - start));
    if (at >= buf.length) continue;
    if (kind <= 3) {
      buf[at] = buf[at]! ^ (1 << pick(8)); // bit flip
    } else if (kind <= 5) {
      buf[at] = pick(256); // random byte
    } else if (kind <= 7) {
      const v = INTERESTING[pick(INTERESTING.length)]!;
      const aligned = at & ~3;
      if (aligned + 4 <= buf.length) buf.writeUInt32LE(v >>> 0, aligned);
    } else {
      const v = INTERESTING[pick(INTERESTING.length)]! & 0xffff;
      const aligned = at & ~1;
      if (aligned + 2 <= buf.length) buf.writeUInt16LE(v, aligned);
    }
  }
  return buf;
}

/** Everything a consumer might do with an image. */
function exercise(r: Ext4Reader): void {
  for (const e of r.walk()) {
    if (e.type === 'file') {
      r.extents(e.ino);
      if (e.size <= 4 * MiB) r.readFile(e.ino);
      else {
        r.readRange(e.ino, 0, MiB);
        r.readRange(e.ino, e.size - 1000, 1000);
      }
    } else if (e.type === 'symlink') {
      r.readlink(e.path);
    } else if (e.type === 'dir') {
      r.list(e.path);
    }
  }
  for (const p of ['/special/hello.txt', '/special/long-link', '/many/entry-with-a-longer-name-00042.conf', '/special/dir-link/e00/f1.txt']) {
    try {
      r.stat(p);
      if (!p.endsWith('link')) r.readFile(p);
    } catch (err) {
      if (!(err instanceof IbuError && err.code === 'IMAGE_PATH_NOT_FOUND')) throw err;
    }
  }
}

function runWorker(images: FuzzImage[], tmp: string): Report {
  const report: Report = { iterations: 0, invalid: 0, clean: 0, failures: [] };
  images.forEach((img, n) => {
    const orig = fs.readFileSync(img.file);
    for (let i = 0; i < MUTATIONS_PER_IMAGE; i++) {
      const seed = (n + 1) * 100_000 + i;
      parentPort!.postMessage({ seed, image: img.name });
      const buf = mutate(orig, img, mulberry32(seed));
      report.iterations++;
      try {
        // Every 25th case goes through a real file, the rest through memory (faster).
        let r: Ext4Reader;
        if (i % 25 === 0) {
          const f = path.join(tmp, 'mutant.img');
          fs.writeFileSync(f, buf);
          r = Ext4Reader.open(f);
        } else {
          r = Ext4Reader.fromBuffer(buf, `${img.name}#${seed}`);
        }
        try {
          exercise(r);
        } finally {
          r.close();
        }
        report.clean++;
      } catch (err) {
        if (err instanceof IbuError && err.code === 'IMAGE_INVALID' && err.message.length > 0) report.invalid++;
        else {
          let saved = '';
          if (report.failures.length < 5) {
            const keep = path.join(os.tmpdir(), 'ibu-ext4-fuzz-failures');
            fs.mkdirSync(keep, { recursive: true });
            saved = path.join(keep, `${img.name}-${seed}.img`);
            fs.writeFileSync(saved, buf);
          }
          report.failures.push(`${img.name} seed ${seed} (mutant saved as ${saved || 'not saved'}): ${(err as Error)?.stack ?? String(err)}`);
        }
      }
    }
  });
  return report;
}

if (!isMainThread && workerData?.fuzz) {
  const { images, tmp } = workerData as { images: FuzzImage[]; tmp: string };
  parentPort!.postMessage({ done: runWorker(images, tmp) });
}

// ---- main side ----

if (isMainThread) {
  const work = tempDir('ibu-ext4-fuzz');
  const images: FuzzImage[] = [];

  before(() => {
    const t = path.join(work, 't');
    fs.mkdirSync(t);
    makeTree(t, standardTree({ manyFiles: 150, nestedDirs: 2, perDir: 3, sizedFiles: 12, fragmented: true }));
    const ti = path.join(work, 'ti');
    fs.mkdirSync(ti);
    makeTree(ti, standardTree({ manyFiles: 150, nestedDirs: 2, perDir: 3, sizedFiles: 12, sparse: false }));
    // Fixed mtimes, UUID and hash seed keep the images nearly identical between runs (inode
    // ctimes still come from the source tree); a failing mutant is also saved for replay.
    setTreeTimes(t, 1_700_000_000);
    setTreeTimes(ti, 1_700_000_000);
    const fixed = { uuid: '6b1c2a3e-0000-4000-8000-00000000f022', fakeTime: 1_700_000_000 };
    const defs = [
      { name: 'ext4-1k', src: t, opts: { size: 6 * MiB, blockSize: 1024 as const, features: ['^64bit'], indexDirs: true } },
      { name: 'ext4-4k-64bit', src: t, opts: { size: 12 * MiB, blockSize: 4096 as const, indexDirs: true } },
      { name: 'ext2-1k', src: t, opts: { size: 8 * MiB, blockSize: 1024 as const, type: 'ext2' as const, indexDirs: true } },
      { name: 'ext4-inline', src: ti, opts: { size: 8 * MiB, blockSize: 4096 as const, features: ['inline_data'] } },
    ];
    for (const d of defs) {
      const file = mkfs(d.src, path.join(work, `${d.name}.img`), { ...d.opts, ...fixed });
      images.push({ name: d.name, file, regions: metadataRegions(file) });
    }
  });
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  /** Superblock, group descriptors, the used part of inode tables, directory and extent blocks. */
  function metadataRegions(file: string): Array<[number, number]> {
    const r = Ext4Reader.open(file);
    try {
      const bs = r.blockSize;
      const regions: Array<[number, number]> = [
        [1024, 2048],
        [(bs === 1024 ? 2 : 1) * bs, (bs === 1024 ? 3 : 2) * bs],
      ];
      const entries = [...r.walk()];
      const imap = debugfs(file, ['imap <2>'])[0]!;
      const at = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(imap)!;
      const itable = Number(at[1]) * bs + parseInt(at[2]!, 16) - r.superblock.inodeSize; // inode 1
      regions.push([itable, itable + entries.length * r.superblock.inodeSize + 20 * r.superblock.inodeSize]);
      for (const e of entries.filter((x) => x.type === 'dir')) {
        for (const x of r.extents(e.ino)) regions.push([x.physical * bs, (x.physical + x.length) * bs]);
      }
      const frag = entries.find((e) => e.path === '/special/fragmented.bin');
      if (frag) {
        for (const b of parseStatBlocks(debugfs(file, [`stat <${frag.ino}>`])[0]!).treeBlockNumbers) regions.push([b * bs, (b + 1) * bs]);
      }
      return regions;
    } finally {
      r.close();
    }
  }

  /** A worker running this file; under tsx (the .ts file in development) with tsx's loader. */
  function startWorker(data: unknown): Worker {
    const self = import.meta.url;
    if (!self.endsWith('.ts')) return new Worker(new URL(self), { workerData: data });
    const api = import.meta.resolve('tsx/esm/api');
    const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(self)}); });`;
    return new Worker(code, { eval: true, workerData: data });
  }

  describe('ext4 reader fuzzing', () => {
    it(`survives ${MUTATIONS_PER_IMAGE} mutations of each of 4 images with only IMAGE_INVALID`, async (t) => {
      const report = await new Promise<Report>((resolve, reject) => {
        const worker = startWorker({ fuzz: true, images, tmp: work });
        let last = 'none';
        const timer = setTimeout(() => {
          void worker.terminate();
          reject(new Error(`the reader hung: no result after ${DEADLINE_MS} ms; last case ${last}`));
        }, DEADLINE_MS);
        worker.on('message', (m: { seed?: number; image?: string; done?: Report }) => {
          if (m.done) {
            clearTimeout(timer);
            resolve(m.done);
          } else last = `${m.image} seed ${m.seed}`;
        });
        worker.on('error', (e) => {
          clearTimeout(timer);
          reject(new Error(`the fuzz worker crashed at ${last}: ${e.stack}`));
        });
        worker.on('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`the fuzz worker exited (${code}) at ${last}`));
        });
      });
      t.diagnostic(`${report.iterations} mutations: ${report.invalid} IMAGE_INVALID, ${report.clean} read cleanly`);
      assert.deepEqual(report.failures.slice(0, 5), [], `${report.failures.length} mutations failed without IMAGE_INVALID`);
      assert.equal(report.iterations, MUTATIONS_PER_IMAGE * 4);
      // Both outcomes must occur, or the mutations are not reaching the structures.
      assert.ok(report.invalid > report.iterations / 10, `only ${report.invalid} mutations were detected as invalid`);
      assert.ok(report.clean > 0);
    });
  });
}
