import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { IbuError, isIbuError } from '../errors.js';
import { Ext4Reader } from '../image/ext4/index.js';
import type { FileMapEntry } from './types.js';

export interface ImageFacts {
  blockSize: number;
  files: FileMapEntry[];
  kernel: string;
  initrd: string;
}

/**
 * Reads an image with the ext4 reader: every entry's type and size, regular files' extents
 * ([logical, physical, length] in blocks) and sha256, symlink targets; and the kernel and initrd
 * paths, following /vmlinuz and /initrd.img links inside the image.
 */
export function readImageFacts(imagePath: string, opts: { requireKernel: boolean }): ImageFacts {
  const r = Ext4Reader.open(imagePath);
  try {
    const files: FileMapEntry[] = [];
    for (const e of r.walk()) {
      if (e.type === 'file') {
        const hash = createHash('sha256');
        const CH = 8 * 1024 * 1024;
        for (let off = 0; off < e.size; off += CH) hash.update(r.readRange(e.ino, off, Math.min(CH, e.size - off)));
        const extents = r
          .extents(e.ino)
          .filter((x) => !x.uninit)
          .map((x): [number, number, number] => [x.logical, x.physical, x.length]);
        files.push({ path: e.path, type: 'file', size: e.size, hash: hash.digest('hex'), extents });
      } else if (e.type === 'symlink') {
        files.push({ path: e.path, type: 'symlink', size: e.size, target: e.target ?? r.readlink(e.path) });
      } else {
        files.push({ path: e.path, type: e.type === 'dir' ? 'dir' : 'other', size: e.size });
      }
    }
    const kernel = resolveInImage(r, '/vmlinuz');
    const initrd = resolveInImage(r, '/initrd.img');
    if (opts.requireKernel && (!kernel || !initrd)) {
      throw new IbuError(
        'IMAGE_NO_KERNEL',
        `${imagePath} has no ${!kernel ? '/vmlinuz' : '/initrd.img'} (a file or a link to one); build the image with a kernel, or publish with --no-kernel`,
      );
    }
    return { blockSize: r.blockSize, files, kernel: kernel ?? '', initrd: initrd ?? '' };
  } finally {
    r.close();
  }
}

/** Cheap early check (before a long publish): the image is ext4 and has its kernel and initrd. */
export function checkImage(imagePath: string, requireKernel: boolean): void {
  const r = Ext4Reader.open(imagePath);
  try {
    if (!requireKernel) return;
    for (const p of ['/vmlinuz', '/initrd.img']) {
      if (!resolveInImage(r, p))
        throw new IbuError('IMAGE_NO_KERNEL', `${imagePath} has no ${p} (a file or a link to one); build the image with a kernel, or publish with --no-kernel`);
    }
  } finally {
    r.close();
  }
}

/** Follows symlinks inside the image (not the host) to a regular file; undefined when absent. */
function resolveInImage(r: Ext4Reader, p: string): string | undefined {
  let cur = p;
  for (let hops = 0; hops < 16; hops++) {
    let e;
    try {
      e = r.stat(cur);
    } catch (err) {
      if (isIbuError(err, 'IMAGE_PATH_NOT_FOUND')) return undefined;
      throw err;
    }
    if (e.type === 'file') return cur;
    if (e.type !== 'symlink') return undefined;
    const t = e.target ?? r.readlink(cur);
    cur = path.posix.resolve(path.posix.dirname(cur), t);
  }
  return undefined;
}
