import { promises as fsp, constants as fsc } from 'node:fs';
import * as path from 'node:path';
import { IbuError, isIbuError, withContext } from '../errors.js';
import { channelPath } from '../store/layout.js';
import type { Store, WriteStore } from '../store/store.js';
import { compareVersions } from '../version.js';
import { processAlive as alive } from '../util/process.js';

/** `channels/<channel>.json`: the versions published on a channel, ascending. */
export interface ChannelFile {
  channel: string;
  versions: string[];
  latest?: string;
  updatedAt?: string;
}

export async function readChannel(store: Store, channel: string): Promise<ChannelFile> {
  try {
    const raw = JSON.parse(Buffer.from(await store.getFile(channelPath(channel))).toString('utf8')) as ChannelFile;
    if (!raw || !Array.isArray(raw.versions)) throw new Error('no versions list');
    return { channel, versions: raw.versions.map(String) };
  } catch (err) {
    if (isIbuError(err, 'NOT_FOUND')) return { channel, versions: [] };
    if (err instanceof IbuError) throw err;
    throw new IbuError('MANIFEST_INVALID', `${channelPath(channel)} in ${store.location} is damaged (${(err as Error).message}); restore it from a backup`, {
      cause: err,
    });
  }
}

/** Refuses a version that is not strictly above every version on the channel. */
export function assertNewer(ch: ChannelFile, version: string): void {
  const latest = ch.versions.reduce<string | undefined>((a, v) => (a === undefined || compareVersions(v, a) > 0 ? v : a), undefined);
  if (latest !== undefined && compareVersions(version, latest) <= 0) {
    throw new IbuError('VERSION_DOWNGRADE', `version ${version} is not newer than ${latest}, the latest on channel '${ch.channel}'; publish a higher version`, {
      details: { latest },
    });
  }
}

export async function writeChannel(store: WriteStore, ch: ChannelFile, version: string): Promise<ChannelFile> {
  const versions = [...ch.versions.filter((v) => v !== version), version].sort(compareVersions);
  const next: ChannelFile = { channel: ch.channel, versions, latest: versions[versions.length - 1], updatedAt: new Date().toISOString() };
  await store.putFile(channelPath(ch.channel), Buffer.from(JSON.stringify(next, null, 1) + '\n'));
  return next;
}

/**
 * An exclusive lock on a channel of a local store (`channels/<channel>.lock`, created O_EXCL and
 * holding the owner's pid). A lock whose process is gone is stale and taken over, so a publisher
 * killed with -9 does not block the channel forever.
 */
export async function lockChannel(storeRoot: string, channel: string): Promise<() => Promise<void>> {
  const file = path.join(storeRoot, channelPath(channel).replace(/\.json$/, '.lock'));
  await fsp.mkdir(path.dirname(file), { recursive: true });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await fsp.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return async () => {
        await fsp.rm(file, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw withContext(err, `locking channel ${channel}`, 'IO_ERROR');
      const pid = Number((await fsp.readFile(file, 'utf8').catch(() => '')).trim());
      if (pid > 0 && pid !== process.pid && alive(pid)) {
        throw new IbuError('CONFLICT', `channel '${channel}' is being published by process ${pid} (${file}); wait for it to finish`);
      }
      await fsp.rm(file, { force: true });
    }
  }
  throw new IbuError('CONFLICT', `could not lock channel '${channel}' (${file}); remove the lock file if no publish is running`);
}
