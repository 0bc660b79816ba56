/**
 * Pure: where the pieces of an initramfs image lie, so that make can diff what is inside
 * rather than its compressed bytes (docs/delta-format.md, "Compressed files").
 *
 * Debian 13's mkinitramfs writes, back to back: the early cpio (CPU microcode, uncompressed),
 * an uncompressed cpio of the files that are compressed already (the `.ko.xz` modules), and
 * the main cpio compressed as one stream (zstd, or gzip without zstd installed). Each cpio
 * archive is "newc" (ASCII headers, 4-byte alignment) ending with a TRAILER!!! member and
 * padded with zeros. This reads that layout: each member's data, and the compressed tail.
 */

export interface CpioMember {
  name: string;
  /** Byte offset and length of the member's data in the file. */
  start: number;
  length: number;
}

export interface CpioLayout {
  /** Regular-file members with data, in file order (directories, links and the trailers carry none worth diffing). */
  members: CpioMember[];
  /** Where the bytes after the last uncompressed archive begin (the compressed main archive), when any follow. */
  tail: number | undefined;
}

const NEWC = Buffer.from('070701');
const NEWC_CRC = Buffer.from('070702');
const HEADER = 110;
const TRAILER = 'TRAILER!!!';
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

const align4 = (n: number): number => (n + 3) & ~3;

function isNewc(b: Buffer, at: number): boolean {
  const m = b.subarray(at, at + 6);
  return m.length === 6 && (m.equals(NEWC) || m.equals(NEWC_CRC));
}

function hex8(b: Buffer, at: number): number | undefined {
  const s = b.toString('latin1', at, at + 8);
  return /^[0-9a-fA-F]{8}$/.test(s) ? parseInt(s, 16) : undefined;
}

/**
 * The layout of a file that starts with a newc cpio archive; undefined when it does not, or when
 * a header is malformed or runs past the end. After each archive's trailer the zero padding is
 * skipped; another archive may follow, else the rest is the tail (undefined when nothing is left).
 */
export function cpioLayout(file: Buffer): CpioLayout | undefined {
  if (!isNewc(file, 0)) return undefined;
  const members: CpioMember[] = [];
  let at = 0;
  for (;;) {
    // One archive.
    for (;;) {
      if (!isNewc(file, at) || at + HEADER > file.length) return undefined;
      const mode = hex8(file, at + 14);
      const size = hex8(file, at + 54);
      const nameSize = hex8(file, at + 94);
      if (mode === undefined || size === undefined || nameSize === undefined || nameSize < 1) return undefined;
      const nameEnd = at + HEADER + nameSize;
      const start = align4(nameEnd);
      const end = start + size;
      if (end > file.length) return undefined;
      const name = file.toString('latin1', at + HEADER, nameEnd - 1);
      at = align4(end);
      if (name === TRAILER) break;
      if ((mode & S_IFMT) === S_IFREG && size > 0) members.push({ name, start, length: size });
    }
    while (at < file.length && file[at] === 0) at++;
    if (at >= file.length) return { members, tail: undefined };
    if (!isNewc(file, at)) return { members, tail: at };
  }
}
