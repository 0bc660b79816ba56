import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import { publishRelease, type PublishOptions, type PublishResult } from '../release/publish.js';
import type { ManifestZfs, ZfsStreamRef } from '../release/types.js';
import { assertDataset, exists, listSnapshots, zfs, zfsGet, zvolDevice } from './tools.js';
import { zfsSend } from './stream.js';
import { writeImageToZvol, type ZvolWriteStats } from './zvol.js';

export interface ZfsPublishOptions extends PublishOptions {
  /** POOL/VOLUME: one sparse zvol holding every release as a snapshot named after its version. */
  dataset: string;
  /** Streams hashed into the manifest: from the previous N snapshotted releases of the channel. */
  streamsFrom?: number;
  /** volblocksize when the zvol is created (default 8 KiB, ZFS 2.1's default). */
  volblocksize?: number;
}

export interface ZfsPublishResult extends PublishResult {
  zfs: ManifestZfs & { write: ZvolWriteStats; seconds: { write: number; hash: number } };
}

const roundUp = (n: number, m: number): number => Math.ceil(n / m) * m;

/**
 * `ibu zfs publish`: the normal publish (chunks, signed manifest, channel) plus the ZFS side,
 * done under the channel lock before signing: the image is written into the zvol block by block
 * (only blocks that differ), snapshotted as DATASET@<version>, and the incremental streams from
 * the previous releases' snapshots are generated once to record their sha256 and size (and the
 * snapshot GUIDs) in the signed manifest. A device then trusts a stream only if it hashes to that.
 */
export async function publishZfsRelease(o: ZfsPublishOptions): Promise<ZfsPublishResult> {
  const dataset = assertDataset(o.dataset, '--dataset');
  const k = o.streamsFrom ?? 3;
  let info: ZfsPublishResult['zfs'] | undefined;
  const res = await publishRelease({
    ...o,
    beforeSign: async ({ version, channelVersions, imageSize }) => {
      const t0 = performance.now();
      const vbs = o.volblocksize ?? 8192;
      if (!(await exists(dataset))) {
        // Sparse (-s): a thick zvol reserves more than its size. Compression makes zero blocks holes.
        await zfs(
          ['create', '-p', '-s', '-V', String(roundUp(imageSize, vbs)), '-o', `volblocksize=${vbs}`, '-o', 'compression=lz4', dataset],
          `creating the zvol ${dataset}`,
        );
      }
      const volblocksize = Number(await zfsGet(dataset, 'volblocksize'));
      if ((await zfsGet(dataset, 'compression')) === 'off') await zfs(['set', 'compression=lz4', dataset], `enabling compression on ${dataset}`);
      const volsize = roundUp(imageSize, volblocksize);
      if (Number(await zfsGet(dataset, 'volsize')) !== volsize) await zfs(['set', `volsize=${volsize}`, dataset], `resizing ${dataset}`);
      const snaps = await listSnapshots(dataset);
      if (snaps.some((s) => s.name === version)) {
        // Left by a publish that failed after snapshotting: the version is not on the channel (checked).
        await zfs(['destroy', `${dataset}@${version}`], `removing the stale snapshot ${dataset}@${version}`);
      }
      const dev = await zvolDevice(dataset);
      const write = await writeImageToZvol(o.image, dev, volblocksize);
      if (imageSize < volsize) {
        // The tail past the image must be zero too, for a stable stream.
        const fh = await fsp.open(dev, 'r+');
        try {
          await fh.write(Buffer.alloc(volsize - imageSize), 0, volsize - imageSize, imageSize);
          await fh.sync();
        } finally {
          await fh.close();
        }
      }
      await zfs(['snapshot', `${dataset}@${version}`], `snapshotting ${dataset}@${version}`);
      const t1 = performance.now();
      const guid = (await zfsGet(`${dataset}@${version}`, 'guid'))!;
      const have = new Map((await listSnapshots(dataset)).map((s) => [s.name, s.guid]));
      const sources = channelVersions.filter((v) => v !== version && have.has(v)).slice(-k);
      const streams: ZfsStreamRef[] = [];
      for (const from of sources.reverse()) {
        const s = await zfsSend(dataset, from, version, null);
        streams.push({ from, fromGuid: have.get(from)!, size: s.size, sha256: s.sha256 });
      }
      const zfsField: ManifestZfs = { dataset, guid, volsize, volblocksize, streams };
      info = { ...zfsField, write, seconds: { write: (t1 - t0) / 1000, hash: (performance.now() - t1) / 1000 } };
      return { zfs: zfsField };
    },
  });
  if (!info) throw new IbuError('INTERNAL', 'publish finished without its ZFS part.');
  return { ...res, zfs: info };
}
