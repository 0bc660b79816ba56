import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { DeltaFile } from '../../src/delta/types.js';

/**
 * A small real delta (two 2 MiB ext4 images, 1 KiB blocks) written by the format code as it
 * was before the split into cursor, codec, file and validation, with its decoded form as JSON
 * (hashes in hex). New code must read it and write the same bytes again.
 */
const dir = fileURLToPath(new URL('../../../test/delta/fixtures/', import.meta.url));
export const OLD_DELTA = `${dir}v1-before-split.ibudelta`;

export function oldDecoded(): DeltaFile {
  const hashes = new Set(['hash', 'srcHash', 'dstHash']);
  return JSON.parse(fs.readFileSync(`${dir}v1-before-split.json`, 'utf8'), (k: string, v: unknown) =>
    hashes.has(k) && typeof v === 'string' ? Buffer.from(v, 'hex') : v,
  ) as DeltaFile;
}
