import type { Inode } from './inode.js';
import { invalid } from './errors.js';

const XATTR_MAGIC = 0xea020000;
const SYSTEM_INDEX = 7; // "system." name prefix

/**
 * The bytes of an inline-data inode: the 60 bytes of i_block, continued by the in-inode
 * extended attribute "system.data" when the content is longer.
 */
export function inlineData(inode: Inode): { head: Buffer; tail: Buffer } {
  return { head: inode.iblock, tail: systemData(inode) };
}

function systemData(inode: Inode): Buffer {
  const area = inode.xattrArea;
  if (area.length < 4 || area.readUInt32LE(0) !== XATTR_MAGIC) return Buffer.alloc(0);
  const base = 4;
  let off = base;
  while (off + 16 <= area.length) {
    if (area.readUInt32LE(off) === 0) break;
    const nameLen = area.readUInt8(off);
    const nameIndex = area.readUInt8(off + 1);
    const valueOffs = area.readUInt16LE(off + 2);
    const valueInum = area.readUInt32LE(off + 4);
    const valueSize = area.readUInt32LE(off + 8);
    if (off + 16 + nameLen > area.length) break;
    const name = area.subarray(off + 16, off + 16 + nameLen).toString('latin1');
    if (nameIndex === SYSTEM_INDEX && name === 'data') {
      if (valueInum !== 0) throw invalid(`The inline data of inode ${inode.ino} lives in a separate EA inode, which the reader does not support.`);
      if (base + valueOffs + valueSize > area.length) throw invalid(`The inline data of inode ${inode.ino} runs past the inode; the image is corrupt.`);
      return area.subarray(base + valueOffs, base + valueOffs + valueSize);
    }
    off += (16 + nameLen + 3) & ~3;
  }
  return Buffer.alloc(0);
}
