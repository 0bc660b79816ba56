/**
 * The effects around the pure /etc merge (etc-merge.ts): read a tree of /etc into facts, and
 * write a plan's result as an overlayfs upper directory for the new image (docs/boot.md,
 * "Read-only root"): the new image's /etc is the lower layer, so only what differs from the
 * new defaults is written (the device's files, merged account files, whiteouts for what the
 * device deleted). The layer is built beside its final place and renamed in, so a crash leaves
 * either no layer or a whole one, and running the step again rebuilds it from the same facts.
 */
import { createHash } from 'node:crypto';
import { promises as fsp, type Stats } from 'node:fs';
import * as path from 'node:path';
import { IbuError, withContext } from '../errors.js';
import { fsyncDir } from '../util/atomic.js';
import { run } from '../util/exec.js';
import type { EtcDecision, EtcEntry, EtcPlan, EtcTree } from './etc-merge.js';
import { accountKind } from './account-merge.js';

/** Account files are read as text for the line merge; larger ones are not account files. */
const MAX_TEXT = 4 * 1024 * 1024;

/** Reads the tree under `root` (an /etc) into facts; a missing root is an empty tree. */
export async function readEtcTree(root: string): Promise<EtcTree> {
  const out = new Map<string, EtcEntry>();
  const walk = async (rel: string): Promise<void> => {
    const names = await fsp.readdir(path.join(root, rel)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' && rel === '') return [] as string[];
      throw err;
    });
    for (const name of names.sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const full = path.join(root, r);
      const s = await fsp.lstat(full);
      const e = await entryOf(full, r, s);
      out.set(r, e);
      if (e.type === 'dir') await walk(r);
    }
  };
  await walk('');
  return out;
}

async function entryOf(full: string, rel: string, s: Stats): Promise<EtcEntry> {
  const perm = s.mode & 0o7777;
  if (s.isDirectory()) return { type: 'dir', mode: perm, uid: s.uid, gid: s.gid };
  if (s.isSymbolicLink()) return { type: 'symlink', target: await fsp.readlink(full) };
  if (s.isFile()) {
    const data = await fsp.readFile(full);
    const text = accountKind(rel) && data.length <= MAX_TEXT ? data.toString('utf8') : undefined;
    return { type: 'file', hash: createHash('sha256').update(data).digest('hex'), mode: perm, uid: s.uid, gid: s.gid, ...(text !== undefined ? { text } : {}) };
  }
  return { type: 'other', mode: s.mode, rdev: s.rdev };
}

export interface EtcLayerPaths {
  /** The device's /etc as it is now (the running system's merged view). */
  deviceEtc: string;
  /** The new image's /etc (mounted read-only): the lower layer of the result. */
  newEtc: string;
  /** The upper directory to create for the new image (replaced whole). */
  upper: string;
  /** Where entries of the device that lose are saved, under their /etc path. */
  aside: string;
}

/**
 * Writes the plan's device layer as an overlayfs upper dir at `paths.upper` and saves the
 * device's losing entries under `paths.aside`. Returns the paths saved aside.
 */
export async function writeEtcLayer(plan: EtcPlan, device: EtcTree, next: EtcTree, paths: EtcLayerPaths): Promise<string[]> {
  const tmp = `${paths.upper}.tmp`;
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  const saved: string[] = [];
  try {
    // the upper's root stands for /etc itself: same mode and owner as the device's /etc
    const etcStat = await fsp.stat(paths.deviceEtc);
    await fsp.chmod(tmp, etcStat.mode & 0o7777);
    await fsp.chown(tmp, etcStat.uid, etcStat.gid);
    for (const d of plan.decisions) {
      if (!d.saveDevice || !device.has(d.path)) continue;
      // a saved directory brings its children with it
      if (saved.some((s) => d.path.startsWith(`${s}/`))) continue;
      const dst = path.join(paths.aside, d.path);
      await fsp.mkdir(path.dirname(dst), { recursive: true });
      await fsp.rm(dst, { recursive: true, force: true });
      await run('cp', ['-a', '--no-dereference', '--', path.join(paths.deviceEtc, d.path), dst]);
      saved.push(d.path);
    }
    const blocked: string[] = [];
    for (const d of plan.deviceLayer) {
      if (blocked.some((b) => d.path.startsWith(`${b}/`))) continue;
      const dst = path.join(tmp, d.path);
      await ensureParents(tmp, d.path, device, next);
      const e = writeEntry(d, device.get(d.path));
      switch (e.kind) {
        case 'whiteout':
          // overlayfs whiteout: a 0/0 character device hides the lower entry
          await run('mknod', [dst, 'c', '0', '0']);
          blocked.push(d.path);
          break;
        case 'dir': {
          await fsp.mkdir(dst).catch((err: NodeJS.ErrnoException) => {
            if (err.code !== 'EEXIST') throw err;
          });
          await fsp.chmod(dst, e.entry.mode);
          await fsp.chown(dst, e.entry.uid, e.entry.gid);
          break;
        }
        case 'copy':
          await run('cp', ['-a', '--no-dereference', '--', path.join(paths.deviceEtc, d.path), dst]);
          blocked.push(d.path);
          break;
        case 'text': {
          const n = next.get(d.path) ?? device.get(d.path);
          const mode = n && n.type === 'file' ? n.mode : 0o644;
          await fsp.writeFile(dst, e.text, { mode });
          await fsp.chmod(dst, mode);
          if (n && n.type === 'file') await fsp.chown(dst, n.uid, n.gid);
          break;
        }
      }
    }
    await run('sync', ['-f', tmp]);
    await fsp.rm(paths.upper, { recursive: true, force: true });
    await fsp.rename(tmp, paths.upper);
    await fsyncDir(path.dirname(paths.upper));
  } catch (err) {
    throw withContext(err, `writing the merged /etc layer ${paths.upper}`, 'MIGRATION_FAILED');
  }
  return saved;
}

type Write = { kind: 'whiteout' } | { kind: 'dir'; entry: Extract<EtcEntry, { type: 'dir' }> } | { kind: 'copy' } | { kind: 'text'; text: string };

function writeEntry(d: EtcDecision, dev: EtcEntry | undefined): Write {
  if (d.result.take === 'merged') return { kind: 'text', text: d.result.text };
  if (d.result.take !== 'device') throw new IbuError('INTERNAL', `${d.path}: the new default is not written to the device layer`);
  if (dev === undefined) return { kind: 'whiteout' };
  if (dev.type === 'dir') return { kind: 'dir', entry: dev };
  return { kind: 'copy' };
}

/** Creates the missing parents of `rel` in the layer with the mode and owner the merged view gives them. */
async function ensureParents(layer: string, rel: string, device: EtcTree, next: EtcTree): Promise<void> {
  const parts = rel.split('/').slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const p = parts.slice(0, i).join('/');
    const dst = path.join(layer, p);
    if (await fsp.lstat(dst).catch(() => null)) continue;
    const e = device.get(p) ?? next.get(p);
    await fsp.mkdir(dst);
    if (e && e.type === 'dir') {
      await fsp.chmod(dst, e.mode);
      await fsp.chown(dst, e.uid, e.gid);
    }
  }
}
