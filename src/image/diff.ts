import { Ext4Reader } from './ext4/index.js';
import type { Ext4Entry } from './ext4/types.js';

/** Why a path that exists in both images counts as changed. */
export type ChangeKind = 'type' | 'content' | 'target' | 'mode' | 'owner' | 'rdev';

export interface ImageDiff {
  added: string[]; // only in the new image
  removed: string[]; // only in the old image
  changed: string[]; // in both, different (see ChangeKind)
  details: Array<{ path: string; changes: ChangeKind[] }>;
}

const COMPARE_CHUNK = 1 << 20;

/**
 * What an upgrade from image `a` to image `b` changes, path by path (both walks are in path
 * order, so one merge pass does it). A path counts as changed when its type, permission bits,
 * owner or group differ, when a regular file's bytes differ (sizes first, then contents in
 * 1 MiB pieces, stopping at the first difference), when a symlink's target differs, or when a
 * device node's number differs. Timestamps, inode numbers, link counts and physical layout
 * are ignored: they change with every build without changing what the device runs.
 */
export function diffImages(a: Ext4Reader, b: Ext4Reader): ImageDiff {
  const res: ImageDiff = { added: [], removed: [], changed: [], details: [] };
  const ia = a.walk()[Symbol.iterator]();
  const ib = b.walk()[Symbol.iterator]();
  let ea = ia.next();
  let eb = ib.next();
  while (!ea.done || !eb.done) {
    if (eb.done || (!ea.done && ea.value.path < eb.value.path)) {
      res.removed.push(ea.value!.path);
      ea = ia.next();
    } else if (ea.done || eb.value.path < ea.value.path) {
      res.added.push(eb.value.path);
      eb = ib.next();
    } else {
      const changes = compareEntries(a, ea.value, b, eb.value);
      if (changes.length > 0) {
        res.changed.push(ea.value.path);
        res.details.push({ path: ea.value.path, changes });
      }
      ea = ia.next();
      eb = ib.next();
    }
  }
  return res;
}

/** Opens both image files, diffs them and closes them. */
export function diffImageFiles(oldImage: string, newImage: string): ImageDiff {
  const a = Ext4Reader.open(oldImage);
  try {
    const b = Ext4Reader.open(newImage);
    try {
      return diffImages(a, b);
    } finally {
      b.close();
    }
  } finally {
    a.close();
  }
}

function compareEntries(a: Ext4Reader, x: Ext4Entry, b: Ext4Reader, y: Ext4Entry): ChangeKind[] {
  if (x.type !== y.type) return ['type'];
  const changes: ChangeKind[] = [];
  if (x.type === 'file' && !sameContent(a, x, b, y)) changes.push('content');
  if (x.type === 'symlink' && x.target !== y.target) changes.push('target');
  if (x.rdev && y.rdev && (x.rdev.major !== y.rdev.major || x.rdev.minor !== y.rdev.minor)) changes.push('rdev');
  if (x.mode !== y.mode) changes.push('mode');
  if (x.uid !== y.uid || x.gid !== y.gid) changes.push('owner');
  return changes;
}

function sameContent(a: Ext4Reader, x: Ext4Entry, b: Ext4Reader, y: Ext4Entry): boolean {
  if (x.size !== y.size) return false;
  for (let off = 0; off < x.size; off += COMPARE_CHUNK) {
    if (!a.readRange(x.ino, off, COMPARE_CHUNK).equals(b.readRange(y.ino, off, COMPARE_CHUNK))) return false;
  }
  return true;
}
