import { invalid } from './errors.js';

/** One name in a directory ('.' and '..' left out). */
export interface DirEntry {
  name: string; // the on-disk bytes decoded as UTF-8
  ino: number;
}

const utf8 = new TextDecoder('utf-8');

/**
 * Parses the directory entries in buf[start, end). Linear directories and the leaf blocks of
 * htree (dir_index) directories share this format. The htree's own blocks hide from a linear
 * reader by design: in the root block '..' spans the rest of the block over the dx_root data,
 * and an interior dx_node block starts with an unused entry (inode 0) spanning the whole block.
 * So reading every block in order and skipping inode 0 yields each name exactly once.
 */
export function parseDirEntries(buf: Buffer, start: number, end: number, hasFiletype: boolean, dirIno: number, out: DirEntry[]): void {
  const where = `directory inode ${dirIno}`;
  let off = start;
  while (off < end) {
    if (end - off < 8) throw invalid(`${where} has a truncated entry at byte ${off}; the image is corrupt.`);
    const ino = buf.readUInt32LE(off);
    const recLen = recordLength(buf.readUInt16LE(off + 4), end - start);
    const nameLen = hasFiletype ? buf.readUInt8(off + 6) : buf.readUInt16LE(off + 6);
    if (recLen < 8 || recLen % 4 !== 0 || off + recLen > end) {
      throw invalid(`${where} has an entry with record length ${recLen} at byte ${off}; the image is corrupt.`);
    }
    if (ino !== 0) {
      if (nameLen === 0 || 8 + nameLen > recLen)
        throw invalid(`${where} has an entry with name length ${nameLen} in a record of ${recLen} bytes; the image is corrupt.`);
      const raw = buf.subarray(off + 8, off + 8 + nameLen);
      if (raw.includes(0x2f) || raw.includes(0)) throw invalid(`${where} has a name containing '/' or a NUL byte; the image is corrupt.`);
      const isDot = nameLen === 1 && raw[0] === 0x2e;
      const isDotDot = nameLen === 2 && raw[0] === 0x2e && raw[1] === 0x2e;
      if (!isDot && !isDotDot) out.push({ name: utf8.decode(raw), ino });
    }
    off += recLen;
  }
}

/** rec_len as stored; with 64 KiB blocks a full-block record is encoded as 0 or 65535. */
function recordLength(raw: number, region: number): number {
  if (region >= 65536 && (raw === 0 || raw === 65535)) return 65536;
  return raw;
}

/** Entries of an inline-data directory: a 4-byte parent inode, then entries in both parts. */
export function parseInlineDir(head: Buffer, tail: Buffer, hasFiletype: boolean, dirIno: number): DirEntry[] {
  const out: DirEntry[] = [];
  parseDirEntries(head, 4, head.length, hasFiletype, dirIno, out);
  if (tail.length > 0) parseDirEntries(tail, 0, tail.length, hasFiletype, dirIno, out);
  return out;
}
