import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { writeFileAtomic } from '../util/atomic.js';
import { manifestPath, manifestZstPath } from '../store/layout.js';
import type { ReleaseStore, StoreLayout } from './store-layout.js';

/** The channel document without `version` (pure: the same edit for a file on disk or an S3 object). */
export function dropFromChannel(doc: unknown, version: string): { next: unknown; changed: boolean } {
  const drop = (list: unknown[]): unknown[] => list.filter((r) => (typeof r === 'string' ? r : (r as { version?: string })?.version) !== version);
  let changed = false;
  let next: unknown = doc;
  if (Array.isArray(doc)) {
    next = drop(doc);
    changed = (next as unknown[]).length !== doc.length;
  } else if (doc && typeof doc === 'object') {
    const o = { ...(doc as Record<string, unknown>) };
    for (const key of ['releases', 'versions']) {
      const list = o[key];
      if (Array.isArray(list)) {
        const kept = drop(list);
        if (kept.length !== list.length) {
          o[key] = kept;
          changed = true;
        }
      }
    }
    // A channel file may name its newest release separately.
    for (const key of ['latest', 'current']) {
      if (o[key] === version || (o[key] as { version?: string } | undefined)?.version === version) {
        const list = (o.releases ?? o.versions) as unknown[] | undefined;
        const last = list && list.length > 0 ? list[list.length - 1] : undefined;
        o[key] = last === undefined ? null : typeof o[key] === 'string' ? (typeof last === 'string' ? last : (last as { version: string }).version) : last;
        changed = true;
      }
    }
    next = o;
  }
  return { next, changed };
}

/** The same removal in an object store (`ibu serve --store s3://...`): channel objects rewritten by PUT, then the manifests deleted. */
async function removeFromStore(store: ReleaseStore, version: string): Promise<{ channels: string[]; removed: boolean }> {
  const channels: string[] = [];
  for (const n of await store.list('channels')) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    const { next, changed } = dropFromChannel(JSON.parse(Buffer.from(await store.getFile(`channels/${n}`)).toString('utf8')), version);
    if (changed) {
      await store.putFile(`channels/${n}`, Buffer.from(JSON.stringify(next, null, 2) + '\n'));
      channels.push(n.slice(0, -5));
    }
  }
  const removed = (await store.statFile(manifestPath(version))) !== undefined;
  // The .zst copy first: a reader that finds no manifest.json never looks for it.
  for (const rel of [manifestZstPath(version), manifestPath(version)]) await store.deleteFile?.(rel);
  return { channels, removed };
}

/**
 * Takes a release out of the store: out of every channel file first (so no device is offered it),
 * then its release directory (renamed aside, then deleted, so a reader never sees half of it).
 * Chunks stay: another release or an unfinished publish may share them, and only a collector that
 * coordinates with publishers could safely delete them (docs/server.md).
 */
export async function removeRelease(layout: StoreLayout, version: string): Promise<{ channels: string[]; removed: boolean }> {
  if (!layout.releasesLocal) return removeFromStore(layout.releases, version);
  const channels: string[] = [];
  let names: string[] = [];
  try {
    names = await fsp.readdir(layout.channelsDir);
  } catch {
    // no channels yet
  }
  for (const n of names) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    const file = path.join(layout.channelsDir, n);
    const doc = JSON.parse(await fsp.readFile(file, 'utf8')) as unknown;
    const { next, changed } = dropFromChannel(doc, version);
    if (changed) {
      await writeFileAtomic(file, JSON.stringify(next, null, 2) + '\n');
      channels.push(n.slice(0, -5));
    }
  }
  const dir = layout.releaseDir(version);
  const aside = path.join(layout.releasesDir, `.${version}.deleting-${randomBytes(4).toString('hex')}`);
  let removed = false;
  try {
    await fsp.rename(dir, aside);
    removed = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (removed) await fsp.rm(aside, { recursive: true, force: true });
  return { channels, removed };
}
