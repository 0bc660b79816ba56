import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError, withContext } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { run } from '../util/exec.js';
import { parseMountInfo } from '../boot/env-location.js';
import type { MigrationRule } from './config.js';
import type { MigrationSummary } from './journal.js';
import { mergeFstab } from './adopt-migration.js';

export type MigrationChange = MigrationSummary['changed'][number];

/**
 * Merges colon-separated account files (passwd, group, shadow, gshadow, subuid) keyed by the
 * first field, so accounts added on either side survive:
 *  - entries only in the new image (new system users) are kept, in the new image's order;
 *  - entries only on the running system (local users) are appended;
 *  - entries on both sides keep the running system's line (its password hash, shell, home),
 *    except the member list of group/gshadow lines, which is the union of both.
 * Returns the merged text and the conflicts worth reporting (same id, different names).
 */
export function mergeAccountFile(oldText: string, newText: string, kind: string): { text: string; added: string[]; conflicts: string[] } {
  const parse = (t: string): Array<[string, string]> =>
    t
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.startsWith('#'))
      .map((l) => [l.slice(0, l.indexOf(':') < 0 ? l.length : l.indexOf(':')), l]);
  const oldEntries = parse(oldText);
  const newEntries = parse(newText);
  const oldMap = new Map(oldEntries);
  const newNames = new Set(newEntries.map(([n]) => n));
  const isGroup = kind === 'group' || kind === 'gshadow';
  const memberField = kind === 'group' ? 3 : kind === 'gshadow' ? 3 : -1;
  const out: string[] = [];
  for (const [name, line] of newEntries) {
    const old = oldMap.get(name);
    if (old === undefined) {
      out.push(line);
      continue;
    }
    if (isGroup && memberField >= 0) {
      const o = old.split(':');
      const n = line.split(':');
      const members = new Set([...(o[memberField] ?? '').split(','), ...(n[memberField] ?? '').split(',')].filter(Boolean));
      while (o.length <= memberField) o.push('');
      o[memberField] = [...members].join(',');
      out.push(o.join(':'));
    } else {
      out.push(old);
    }
  }
  const added: string[] = [];
  for (const [name, line] of oldEntries) {
    if (newNames.has(name)) continue;
    out.push(line);
    added.push(name);
  }
  // uid/gid collisions between a local account and a new system account: reported, not renumbered.
  const conflicts: string[] = [];
  if (kind === 'passwd' || kind === 'group') {
    const byId = new Map<string, string>();
    for (const l of out) {
      const f = l.split(':');
      const id = f[2];
      if (id === undefined) continue;
      const prev = byId.get(id);
      if (prev !== undefined && prev !== f[0]) conflicts.push(`${kind} id ${id} is used by both ${prev} and ${f[0]}`);
      else byId.set(id, f[0]!);
    }
  }
  return { text: out.join('\n') + '\n', added, conflicts };
}

/** The file kind a merge rule applies to, from its basename. */
export function accountKind(p: string): string | null {
  const b = path.basename(p).replace(/-$/, '');
  return ['passwd', 'group', 'shadow', 'gshadow', 'subuid', 'subgid'].includes(b) ? b : null;
}

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
export async function withImageMounted<T>(image: string, mnt: string, fn: (root: string) => Promise<T>): Promise<T> {
  await fsp.mkdir(mnt, { recursive: true });
  await unmountStale(mnt);
  await run('mount', ['-o', 'loop,rw', '-t', 'ext4', image, mnt]).catch((err) => {
    throw withContext(err, `mounting ${image} to migrate configuration (needs root)`, 'MIGRATION_FAILED');
  });
  try {
    return await fn(mnt);
  } finally {
    await run('umount', [mnt]);
  }
}
