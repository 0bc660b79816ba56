/**
 * dm-verity for image files (issue #22): the hash tree is APPENDED to the image file, right
 * after the ext4 filesystem (hash offset = the filesystem's size), made by `veritysetup format`
 * (cryptsetup-bin) with a superblock. Why appended, not beside: the image file stays the one
 * thing that is published, chunked, delta'd, downloaded, sha256-checked against the signed
 * manifest and kept on the device, so every transport carries the tree with no change, and GRUB
 * and ext4 ignore bytes past the filesystem's end. The initramfs needs only the root hash (from
 * the signed manifest, written by the agent at apply) and the hash offset.
 *
 * Deterministic: salt and superblock UUID are derived from the product and version, so the same
 * image published as the same version gives the same bytes and the same root hash.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { IbuError, withContext } from '../errors.js';
import { run } from '../util/exec.js';
import { Ext4Reader } from './ext4/index.js';

/** What the signed manifest records of an image's verity tree (all the device and the initramfs need). */
export interface VerityInfo {
  /** dm-verity on-disk format (veritysetup --format); 1 is the current one. */
  format: 1;
  hashAlgorithm: 'sha256';
  dataBlockSize: number;
  hashBlockSize: number;
  /** Blocks of the ext4 filesystem covered by the tree. */
  dataBlocks: number;
  /** Byte offset of the verity superblock and tree in the image file (= dataBlocks * dataBlockSize). */
  hashOffset: number;
  /** Bytes of the tree with its superblock (the file's size is hashOffset + treeBytes). */
  treeBytes: number;
  salt: string;
  rootHash: string;
}

const hex = (text: string, bytes: number): string =>
  createHash('sha256')
    .update(text)
    .digest('hex')
    .slice(0, bytes * 2);

function uuidOf(text: string): string {
  const h = hex(text, 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-8${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** The filesystem's size in bytes and blocks, read from its superblock. */
export function ext4Extent(image: string): { blockSize: number; blocks: number; bytes: number } {
  const r = Ext4Reader.open(image);
  try {
    const blockSize = r.blockSize;
    const blocks = Number(r.superblock.blocksCount);
    return { blockSize, blocks, bytes: blockSize * blocks };
  } finally {
    r.close();
  }
}

/**
 * Appends (or rebuilds) the verity tree of `image` in place: the file is cut to the end of its
 * filesystem, then `veritysetup format` writes superblock and tree after it. Returns what the
 * manifest records.
 */
export async function appendVerityTree(image: string, o: { product: string; version: string }): Promise<VerityInfo> {
  const fs = ext4Extent(image);
  const size = (await fsp.stat(image)).size;
  if (size < fs.bytes)
    throw new IbuError('IMAGE_INVALID', `${image} is ${size} bytes but its filesystem needs ${fs.bytes}: the file is truncated; rebuild it.`);
  // an earlier tree (republishing the same file): cut it, the new one replaces it
  if (size > fs.bytes) await fsp.truncate(image, fs.bytes);
  const salt = hex(`ibu-verity-salt:${o.product}:${o.version}`, 32);
  const res = await run('veritysetup', [
    'format',
    '--hash=sha256',
    `--data-block-size=${fs.blockSize}`,
    `--hash-block-size=${fs.blockSize}`,
    `--data-blocks=${fs.blocks}`,
    `--hash-offset=${fs.bytes}`,
    `--salt=${salt}`,
    `--uuid=${uuidOf(`ibu-verity-uuid:${o.product}:${o.version}`)}`,
    image,
    image,
  ]).catch((err) => {
    throw withContext(err, `computing the dm-verity tree of ${image} (veritysetup, package cryptsetup-bin)`);
  });
  const rootHash = /Root hash:\s+([0-9a-f]{64})/.exec(res.stdout)?.[1];
  if (!rootHash) throw new IbuError('TOOL_FAILED', `veritysetup format printed no root hash for ${image}:\n${res.stdout}`);
  const after = (await fsp.stat(image)).size;
  return {
    format: 1,
    hashAlgorithm: 'sha256',
    dataBlockSize: fs.blockSize,
    hashBlockSize: fs.blockSize,
    dataBlocks: fs.blocks,
    hashOffset: fs.bytes,
    treeBytes: after - fs.bytes,
    salt,
    rootHash,
  };
}

/** Checks the tree in `image` against `info.rootHash` (veritysetup verify reads every block). */
export async function verifyVerityTree(image: string, info: VerityInfo): Promise<void> {
  const res = await run('veritysetup', ['verify', `--hash-offset=${info.hashOffset}`, image, image, info.rootHash], { allowFailure: true });
  if (res.code !== 0)
    throw new IbuError(
      'VERITY_MISMATCH',
      `${image}: its dm-verity tree does not match the root hash ${info.rootHash} of the signed manifest (${res.stderr.trim() || `exit ${res.code}`}).`,
    );
}
