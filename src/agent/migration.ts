import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError, withContext } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { run } from '../util/exec.js';
import { parseMountInfo } from '../boot/env-location.js';
import type { MigrationRule } from './config.js';
import type { MigrationSummary } from './journal.js';
import { accountKind, mergeAccountFile } from './account-merge.js';
import { mergeFstab } from './adopt-migration.js';

export type MigrationChange = MigrationSummary['changed'][number];

export { accountKind, mergeAccountFile } from './account-merge.js';

/** Present in an image built with `readonly: true` (product spec): its root is mounted read-only, /etc and /var are overlays (docs/boot.md). */
export const READONLY_MARKER = 'usr/lib/ibu/readonly';

async function lstatOrNull(p: string): Promise<import('node:fs').Stats | null> {
  return fsp.lstat(p).catch(() => null);
}

/**
 * Applies the rules from the running system (`fromRoot`) into the new image's root (`toRoot`,
 * the image mounted read-write). Idempotent: running it again after a crash gives the same
 * result (copy overwrites, keep-new sees the file it copied, merge of a merge changes nothing).
 *  - copy: the running system's file or directory replaces the new image's;
 *  - keep-new: the new image's file wins; copied over only where the new image has none;
 *  - merge: account files merged line by line (mergeAccountFile); fstab: data-disk entries added (mergeFstab).
 */
export async function migrateTree(rules: MigrationRule[], fromRoot: string, toRoot: string): Promise<MigrationChange[]> {
  const changes: MigrationChange[] = [];
  for (const rule of rules) {
    const src = path.join(fromRoot, rule.path);
    const dst = path.join(toRoot, rule.path);
    const s = await lstatOrNull(src);
    const d = await lstatOrNull(dst);
    const note = (action: string, detail?: string): void => {
      changes.push({ path: rule.path, strategy: rule.strategy, action, ...(detail ? { detail } : {}) });
    };
    try {
      if (!s) {
        note('skipped', 'not present on the running system');
        continue;
      }
      switch (rule.strategy) {
        case 'copy':
          await replaceWith(src, dst, s.isDirectory());
          note(d ? 'replaced' : 'copied');
          break;
        case 'keep-new':
          if (d) note('kept-new');
          else {
            await replaceWith(src, dst, s.isDirectory());
            note('copied', 'absent in the new image');
          }
          break;
        case 'merge': {
          if (path.basename(rule.path) === 'fstab' && s.isFile()) {
            const newText = d ? await fsp.readFile(dst, 'utf8') : '';
            const m = mergeFstab(await fsp.readFile(src, 'utf8'), newText);
            if (m.text === newText) note('unchanged');
            else {
              await writeFileAtomic(dst, m.text, d ? d.mode & 0o7777 : 0o644);
              note('merged', `kept data-disk entries: ${m.added.join(', ')}`);
            }
            break;
          }
          const kind = accountKind(rule.path);
          if (!kind || !s.isFile())
            throw new IbuError(
              'MIGRATION_FAILED',
              `merge works on account files (passwd, group, shadow, gshadow, subuid, subgid) and fstab, not ${rule.path}; use copy or keep-new for it.`,
            );
          if (!d) {
            await replaceWith(src, dst, false);
            note('copied', 'absent in the new image');
            break;
          }
          const oldText = await fsp.readFile(src, 'utf8');
          const newText = await fsp.readFile(dst, 'utf8');
          const m = mergeAccountFile(oldText, newText, kind);
          if (m.text === newText) {
            note('unchanged');
            break;
          }
          await writeFileAtomic(dst, m.text, d.mode & 0o7777);
          await fsp.chown(dst, d.uid, d.gid);
          const detail = [m.added.length ? `kept local entries: ${m.added.join(', ')}` : 'updated shared entries', ...m.conflicts].join('; ');
          note('merged', detail);
          break;
        }
      }
    } catch (err) {
      throw withContext(err, `migrating ${rule.path} (${rule.strategy})`, 'MIGRATION_FAILED');
    }
  }
  return changes;
}

/** Replaces dst with a copy of src (ownership, modes, links, times kept) using cp -a. */
async function replaceWith(src: string, dst: string, isDir: boolean): Promise<void> {
  await fsp.mkdir(path.dirname(dst), { recursive: true });
  if (isDir) {
    await fsp.rm(dst, { recursive: true, force: true });
    await run('cp', ['-a', '--', src, dst]);
    return;
  }
  // A file: copy beside it, then rename over, so the new image never holds half a file.
  const tmp = `${dst}.ibu-migrate.tmp`;
  await run('cp', ['-a', '--', src, tmp]);
  await fsp.rename(tmp, dst);
}

/** Unmounts a stale mount of ours (left by a killed agent). */
export async function unmountStale(mnt: string): Promise<boolean> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const real = await fsp.realpath(mnt).catch(() => mnt);
  if (!parseMountInfo(text).some((m) => m.mountPoint === real)) return false;
  await run('umount', [real]);
  return true;
}

/**
 * Loop-mounts the new image read-write at `mnt`, runs `fn` on it, unmounts. `mount -o loop`
 * sets autoclear, so the loop device goes away with the unmount. Needs root.
 */
export async function withImageMounted<T>(image: string, mnt: string, fn: (root: string) => Promise<T>, mode: 'rw' | 'ro' = 'rw'): Promise<T> {
  await fsp.mkdir(mnt, { recursive: true });
  await unmountStale(mnt);
  if (mode === 'ro') return withOwnLoop(image, mnt, fn);
  // ro,noload: a read-only image is never written, not even by a journal replay
  await run('mount', ['-o', mode === 'rw' ? 'loop,rw' : 'loop,ro,noload', '-t', 'ext4', image, mnt]).catch((err) => {
    throw withContext(err, `mounting ${image} to migrate configuration (needs root)`, 'MIGRATION_FAILED');
  });
  try {
    return await fn(mnt);
  } finally {
    await run('umount', [mnt]);
  }
}

/**
 * Read-only, on a loop device of its own. `mount -o loop,ro` reuses a loop device that already
 * backs the file read-only: the running image's, which dm-verity holds exclusively on a verified
 * root, and the mount then fails ("Can't open blockdev"). ro,noload: never written, not even by a
 * journal replay.
 */
async function withOwnLoop<T>(image: string, mnt: string, fn: (root: string) => Promise<T>): Promise<T> {
  const dev = (
    await run('losetup', ['--find', '--show', '--read-only', image]).catch((err) => {
      throw withContext(err, `attaching ${image} to migrate configuration (needs root)`, 'MIGRATION_FAILED');
    })
  ).stdout.trim();
  try {
    await run('mount', ['-o', 'ro,noload', '-t', 'ext4', dev, mnt]).catch((err) => {
      throw withContext(err, `mounting ${image} (${dev}) to migrate configuration (needs root)`, 'MIGRATION_FAILED');
    });
    try {
      return await fn(mnt);
    } finally {
      await run('umount', [mnt]);
    }
  } finally {
    await run('losetup', ['-d', dev]).catch(() => null);
  }
}
