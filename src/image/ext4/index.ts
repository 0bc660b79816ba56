import { constants as bufferConstants } from 'node:buffer';
import { posix } from 'node:path';
import { IbuError } from '../../errors.js';
import type { Ext4Entry, Ext4Superblock, PhysicalExtent } from './types.js';
import { BlockDevice, BufferSource, FileSource, type ByteSource } from './source.js';
import { parseSuperblock, publicSuperblock, SUPERBLOCK_OFFSET, type Superblock } from './superblock.js';
import { GroupDescriptors } from './group-descriptors.js';
import { INODE_FLAG, ROOT_INO, readInode, type Inode } from './inode.js';
import { extentDepth, extentMap } from './extents.js';
import { blockMap, blockMapMaxBlocks } from './block-map.js';
import { inlineData } from './inline-data.js';
import { parseDirEntries, parseInlineDir, type DirEntry } from './directory.js';
import { invalid } from './errors.js';

export type { Ext4Entry, Ext4FileType, Ext4Superblock, PhysicalExtent } from './types.js';

const MAX_SYMLINK_HOPS = 40;
const FAST_SYMLINK_MAX = 60; // a target shorter than i_block is stored in i_block itself
const MAP_CACHE = 16;
const DIR_CACHE = 16;

/**
 * A read-only ext4 (and ext2/ext3) reader working on the image file directly: no mount, no
 * root, no kernel driver. All reads are synchronous pread(2) calls through a small block
 * cache. Anything malformed in the image raises IbuError IMAGE_INVALID; a missing path raises
 * IMAGE_PATH_NOT_FOUND.
 *
 * Paths are absolute inside the image. `stat`, `list` and `readlink` do not follow a final
 * symlink (lstat semantics); `readFile`, `readRange` and `extents` given a path follow it like
 * open(2) would, with targets resolved against the image root. Given an inode number they
 * work on that inode as it is.
 */
export class Ext4Reader {
  readonly superblock: Ext4Superblock;
  readonly blockSize: number;
  private readonly sb: Superblock;
  private readonly dev: BlockDevice;
  private readonly groups: GroupDescriptors;
  private readonly mapCache = new Map<number, PhysicalExtent[]>();
  private readonly dirCache = new Map<number, Map<string, number>>();

  /** Opens an image file (or block device) for reading. */
  static open(path: string): Ext4Reader {
    return new Ext4Reader(new FileSource(path));
  }

  /** Reads an image held in memory (tests, fuzzing). */
  static fromBuffer(buf: Buffer, name = '<buffer>'): Ext4Reader {
    return new Ext4Reader(new BufferSource(buf, name));
  }

  private constructor(source: ByteSource) {
    try {
      const head = Buffer.alloc(1024);
      const n = source.read(head, SUPERBLOCK_OFFSET);
      this.sb = guard(() => parseSuperblock(head.subarray(0, n), source.size, source.name));
      this.blockSize = this.sb.blockSize;
      this.superblock = publicSuperblock(this.sb);
      this.dev = new BlockDevice(source, this.sb.blockSize, this.sb.blocksCount);
      this.groups = guard(() => new GroupDescriptors(this.dev, this.sb));
      const root = guard(() => this.inode(ROOT_INO));
      if (root.type !== 'dir') throw invalid(`${source.name}: the root inode is not a directory; the image is corrupt.`);
    } catch (err) {
      source.close();
      throw err;
    }
  }

  close(): void {
    this.mapCache.clear();
    this.dirCache.clear();
    this.dev.close();
  }

  /** The entry at `path` without following a final symlink. */
  stat(path: string): Ext4Entry {
    return guard(() => {
      const r = this.resolve(path, false);
      return this.entryOf(this.inode(r.ino), r.path);
    });
  }

  /** The children of a directory (not '.' or '..'), sorted by name. */
  list(dir: string): Ext4Entry[] {
    return guard(() => {
      const r = this.resolve(dir, true);
      const inode = this.inode(r.ino);
      if (inode.type !== 'dir') throw new IbuError('USAGE', `${r.path} in the image is not a directory; list a directory, or use stat for a file.`);
      return this.readDir(inode)
        .map((d) => this.entryOf(this.inode(d.ino), join(r.path, d.name)))
        .sort((a, b) => compare(a.path, b.path));
    });
  }

  /**
   * Every entry under `root` (default '/', itself included) in path order, streamed. A
   * directory reached twice (a loop, or a hard-linked directory) is IMAGE_INVALID.
   */
  *walk(root = '/'): Iterable<Ext4Entry> {
    const r = guard(() => this.resolve(root, true));
    const top = guard(() => this.entryOf(this.inode(r.ino), r.path));
    yield top;
    if (top.type === 'dir') yield* this.walkDir(top.ino, top.path, new Set<number>());
  }

  /** The whole content of a file (holes and unwritten extents read as zeros). */
  readFile(pathOrIno: string | number): Buffer {
    return guard(() => {
      const inode = this.contentInode(pathOrIno);
      return this.readInodeRange(inode, 0, inode.size);
    });
  }

  /** Up to `length` bytes from `offset`; shorter at the end of the file. */
  readRange(pathOrIno: string | number, offset: number, length: number): Buffer {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new IbuError('USAGE', `readRange needs a non-negative integer offset and length (got ${offset}, ${length}).`);
    }
    return guard(() => this.readInodeRange(this.contentInode(pathOrIno), offset, length));
  }

  /** The target of the symlink at `path`. */
  readlink(path: string): string {
    return guard(() => {
      const r = this.resolve(path, false);
      const inode = this.inode(r.ino);
      if (inode.type !== 'symlink') throw new IbuError('USAGE', `${r.path} in the image is not a symbolic link.`);
      return this.symlinkTarget(inode);
    });
  }

  /**
   * The physical extents of a file's data in logical order (ext4 extent leaves as stored, or
   * the runs of an ext2/ext3 block map). Inline-data files, fast symlinks and device nodes
   * have none.
   */
  extents(pathOrIno: string | number): PhysicalExtent[] {
    return guard(() => this.mapping(this.contentInode(pathOrIno)).map((e) => ({ ...e })));
  }

  /** Depth of the extent tree (0: in the inode; -1: not extent-mapped). For tools and tests. */
  extentTreeDepth(pathOrIno: string | number): number {
    return guard(() => {
      const inode = this.contentInode(pathOrIno);
      return inode.flags & INODE_FLAG.EXTENTS ? extentDepth(inode.iblock) : -1;
    });
  }

  // ---- internals ----

  private inode(ino: number): Inode {
    return readInode(this.dev, this.sb, this.groups, ino);
  }

  private *walkDir(ino: number, path: string, visited: Set<number>): Generator<Ext4Entry> {
    if (visited.has(ino)) throw invalid(`The directory ${path} (inode ${ino}) is reached twice; the directory tree has a loop and the image is corrupt.`);
    visited.add(ino);
    const items = guard(() => {
      const list: Array<{ key: string; entry: Ext4Entry; descend: boolean }> = [];
      for (const d of this.readDir(this.inode(ino))) {
        const entry = this.entryOf(this.inode(d.ino), join(path, d.name));
        list.push({ key: d.name, entry, descend: false });
        // A directory's subtree sorts as "name/...", which can come after a sibling such as
        // "name-x": keying it separately keeps the whole walk in path order.
        if (entry.type === 'dir') list.push({ key: `${d.name}/`, entry, descend: true });
      }
      return list.sort((a, b) => compare(a.key, b.key));
    });
    for (const item of items) {
      if (item.descend) yield* this.walkDir(item.entry.ino, item.entry.path, visited);
      else yield item.entry;
    }
  }

  private entryOf(inode: Inode, path: string): Ext4Entry {
    if (inode.type === 'unknown') {
      throw invalid(`${path} points at inode ${inode.ino}, which is not in use (mode 0${inode.mode.toString(8)}); the image is corrupt.`);
    }
    const entry: Ext4Entry = {
      path,
      ino: inode.ino,
      type: inode.type,
      mode: inode.mode & 0o7777,
      uid: inode.uid,
      gid: inode.gid,
      size: inode.size,
      mtime: inode.mtime,
      nlink: inode.links,
    };
    if (inode.type === 'symlink') entry.target = this.symlinkTarget(inode);
    if (inode.type === 'chardev' || inode.type === 'blockdev') entry.rdev = deviceNumber(inode.iblock);
    return entry;
  }

  /** Resolves a path to an inode; intermediate symlinks are followed against the image root. */
  private resolve(path: string, followFinal: boolean): { ino: number; path: string } {
    if (typeof path !== 'string') throw new IbuError('USAGE', `An image path must be a string (got ${typeof path}).`);
    const shown = normalize(path);
    const pending = path.split('/').filter((c) => c !== '' && c !== '.');
    const stack = [ROOT_INO];
    let hops = 0;
    while (pending.length > 0) {
      const name = pending.shift()!;
      if (name === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dir = this.inode(stack[stack.length - 1]!);
      if (dir.type !== 'dir') throw notFound(shown, 'a component of the path is not a directory');
      const ino = this.dirIndex(dir).get(name);
      if (ino === undefined) throw notFound(shown);
      const child = this.inode(ino);
      if (child.type === 'symlink' && (pending.length > 0 || followFinal)) {
        if (++hops > MAX_SYMLINK_HOPS) throw notFound(shown, 'too many levels of symbolic links');
        const target = this.symlinkTarget(child);
        if (target.startsWith('/')) stack.length = 1;
        pending.unshift(...target.split('/').filter((c) => c !== '' && c !== '.'));
        continue;
      }
      stack.push(ino);
    }
    return { ino: stack[stack.length - 1]!, path: shown };
  }

  /** The inode whose content a path (following a final symlink) or inode number refers to. */
  private contentInode(pathOrIno: string | number): Inode {
    if (typeof pathOrIno === 'number') return this.inode(pathOrIno);
    const r = this.resolve(pathOrIno, true);
    const inode = this.inode(r.ino);
    if (inode.type === 'dir') throw new IbuError('USAGE', `${r.path} in the image is a directory; use list or walk for directories.`);
    return inode;
  }

  private dirIndex(dir: Inode): Map<string, number> {
    let index = this.dirCache.get(dir.ino);
    if (index) {
      this.dirCache.delete(dir.ino);
    } else {
      index = new Map();
      for (const d of this.readDir(dir)) if (!index.has(d.name)) index.set(d.name, d.ino);
      if (this.dirCache.size >= DIR_CACHE) this.dirCache.delete(this.dirCache.keys().next().value as number);
    }
    this.dirCache.set(dir.ino, index);
    return index;
  }

  private readDir(dir: Inode): DirEntry[] {
    if (dir.flags & INODE_FLAG.INLINE_DATA) {
      const { head, tail } = inlineData(dir);
      return parseInlineDir(head, tail, this.sb.hasFiletype, dir.ino);
    }
    const bs = this.blockSize;
    if (dir.size % bs !== 0 || dir.size > this.sb.blocksCount * bs) {
      throw invalid(`Directory inode ${dir.ino} has size ${dir.size}, which is not a whole number of blocks inside the filesystem; the image is corrupt.`);
    }
    const nBlocks = dir.size / bs;
    const out: DirEntry[] = [];
    for (const e of this.mapping(dir)) {
      if (e.uninit || e.logical >= nBlocks) continue;
      const count = Math.min(e.length, nBlocks - e.logical);
      const buf = Buffer.allocUnsafe(count * bs);
      this.dev.readExact(buf, e.physical * bs, `directory inode ${dir.ino}`);
      for (let b = 0; b < count; b++) parseDirEntries(buf, b * bs, (b + 1) * bs, this.sb.hasFiletype, dir.ino, out);
    }
    return out;
  }

  private isFastSymlink(inode: Inode): boolean {
    return inode.type === 'symlink' && !(inode.flags & INODE_FLAG.INLINE_DATA) && inode.size < FAST_SYMLINK_MAX;
  }

  private symlinkTarget(inode: Inode): string {
    if (inode.size > this.blockSize || inode.size > 4096) {
      throw invalid(`Symlink inode ${inode.ino} claims a ${inode.size}-byte target (at most ${Math.min(4096, this.blockSize)}); the image is corrupt.`);
    }
    return this.readInodeRange(inode, 0, inode.size).toString('utf8');
  }

  private mapping(inode: Inode): PhysicalExtent[] {
    const cached = this.mapCache.get(inode.ino);
    if (cached) return cached;
    let map: PhysicalExtent[];
    if (inode.flags & INODE_FLAG.INLINE_DATA || this.isFastSymlink(inode) || !hasBlocks(inode)) {
      map = [];
    } else if (inode.flags & INODE_FLAG.EXTENTS) {
      map = extentMap(this.dev, inode.iblock, inode.ino);
    } else {
      const nBlocks = Math.ceil(inode.size / this.blockSize);
      if (nBlocks > blockMapMaxBlocks(this.blockSize)) {
        throw invalid(`Inode ${inode.ino} claims ${inode.size} bytes, more than a block map can address; the image is corrupt.`);
      }
      map = blockMap(this.dev, inode.iblock, nBlocks, inode.ino);
    }
    if (this.mapCache.size >= MAP_CACHE) this.mapCache.delete(this.mapCache.keys().next().value as number);
    this.mapCache.set(inode.ino, map);
    return map;
  }

  private readInodeRange(inode: Inode, offset: number, length: number): Buffer {
    if (offset >= inode.size || length === 0) return Buffer.alloc(0);
    const len = Math.min(length, inode.size - offset);
    if (len > bufferConstants.MAX_LENGTH) {
      throw new IbuError('USAGE', `Inode ${inode.ino} holds ${inode.size} bytes, too many for one buffer; read it in pieces with readRange.`);
    }
    if (!hasBlocks(inode)) return Buffer.alloc(0);
    if (inode.flags & INODE_FLAG.INLINE_DATA || this.isFastSymlink(inode)) {
      const { head, tail } = inode.flags & INODE_FLAG.INLINE_DATA ? inlineData(inode) : { head: inode.iblock, tail: Buffer.alloc(0) };
      const all = Buffer.concat([head, tail]);
      if (inode.size > all.length) throw invalid(`Inode ${inode.ino} claims ${inode.size} bytes of inline data but holds ${all.length}; the image is corrupt.`);
      return Buffer.from(all.subarray(offset, offset + len));
    }
    const out = Buffer.alloc(len);
    const bs = this.blockSize;
    const end = offset + len;
    const map = this.mapping(inode);
    // Binary search for the first extent that ends after `offset`.
    let lo = 0;
    let hi = map.length;
    const first = Math.floor(offset / bs);
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (map[mid]!.logical + map[mid]!.length <= first) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < map.length; i++) {
      const e = map[i]!;
      const eStart = e.logical * bs;
      if (eStart >= end) break;
      if (e.uninit) continue;
      const from = Math.max(offset, eStart);
      const to = Math.min(end, (e.logical + e.length) * bs);
      if (to <= from) continue;
      this.dev.readExact(out.subarray(from - offset, to - offset), e.physical * bs + (from - eStart), `the data of inode ${inode.ino}`);
    }
    return out;
  }
}

/** Regular files, directories and symlinks have data; device nodes, FIFOs and sockets do not. */
function hasBlocks(inode: Inode): boolean {
  return inode.type === 'file' || inode.type === 'dir' || inode.type === 'symlink';
}

function deviceNumber(iblock: Buffer): { major: number; minor: number } {
  const old = iblock.readUInt32LE(0);
  if (old !== 0) return { major: (old >> 8) & 0xff, minor: old & 0xff };
  const dev = iblock.readUInt32LE(4);
  return { major: (dev & 0xfff00) >>> 8, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) };
}

function normalize(path: string): string {
  const p = posix.normalize(`/${path}`);
  return p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p;
}

function join(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function notFound(path: string, why?: string): IbuError {
  return new IbuError('IMAGE_PATH_NOT_FOUND', `${path} does not exist in the image${why ? ` (${why})` : ''}; check the path with 'ibu image ls'.`);
}

/**
 * Malformed on-disk values that slip past the explicit checks surface as Node's buffer range
 * errors; they too mean a corrupt image, never a reader crash.
 */
function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException)?.code;
    if (err instanceof RangeError && (code === 'ERR_OUT_OF_RANGE' || code === 'ERR_BUFFER_OUT_OF_BOUNDS')) {
      throw invalid(`A structure in the image points outside its block (${(err as Error).message}); the image is corrupt.`, err);
    }
    throw err;
  }
}
