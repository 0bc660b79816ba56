// Counts the 4 KiB blocks that differ between two images of the same size:
//   npx tsx bench/lib/block-diff.ts A.img B.img   → {"blocks":N,"differing":D,"differingBytes":...}
// This is what a block-level transport (e.g. ZFS incremental send of a zvol) would move.
import * as fs from 'node:fs';

const [a, b] = process.argv.slice(2);
if (!a || !b) {
  process.stderr.write('usage: block-diff A.img B.img\n');
  process.exit(2);
}
const BLOCK = 4096;
const CHUNK = 1024 * BLOCK;
const fa = fs.openSync(a, 'r');
const fb = fs.openSync(b, 'r');
const size = Math.max(fs.fstatSync(fa).size, fs.fstatSync(fb).size);
const ba = Buffer.alloc(CHUNK);
const bb = Buffer.alloc(CHUNK);
let differing = 0;
for (let off = 0; off < size; off += CHUNK) {
  const na = fs.readSync(fa, ba, 0, CHUNK, off);
  const nb = fs.readSync(fb, bb, 0, CHUNK, off);
  ba.fill(0, na);
  bb.fill(0, nb);
  if (ba.equals(bb)) continue;
  for (let i = 0; i < CHUNK; i += BLOCK) {
    if (Buffer.compare(ba.subarray(i, i + BLOCK), bb.subarray(i, i + BLOCK)) !== 0) differing++;
  }
}
process.stdout.write(JSON.stringify({ blocks: Math.ceil(size / BLOCK), differing, differingBytes: differing * BLOCK }) + '\n');
