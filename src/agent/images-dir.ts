import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { compareVersions, isValidVersion } from '../version.js';

/**
 * The layout of the images directory on the host partition, the one place that names its files:
 *
 *   <v>.img                                    an installed image (GRUB loop-mounts it)
 *   .ibu/state.json                            the agent's journal
 *   .ibu/manifests/<v>.json                    the signed manifest of a target (re-verified on read)
 *   .ibu/staging/<v>.img                       a downloaded, verified image awaiting fsck and install
 *   .ibu/staging/<v>.img.partial[.journal]     a chunk download in progress (src/release/fetch.ts)
 *   .ibu/staging/<from>_<to>.ibudelta[.etag]   a delta download in progress
 *   .ibu/staging/zfs+<from>_<to>.ibudelta      a ZFS stream download ('+' never occurs in a version)
 *   .ibu/mnt                                   where migration mounts the target image
 *   .ibu/mnt-old                               where the /etc merge mounts the running image (read-only)
 *   .ibu/etc/<v>/upper, work                   the /etc overlay of read-only image <v> (docs/boot.md)
 *   .ibu/etc/<v>/aside                         the device's entries that lost the /etc merge into <v>
 *   .ibu/var/upper, work                       the /var overlay of read-only images, kept across versions
 *   .ibu/verity/<v>                            "<root hash> <hash offset>" of image v from its signed manifest,
 *                                              written at apply: what the initramfs opens dm-verity with
 */
export class ImagesDir {
  constructor(readonly root: string) {}

  image(v: string): string {
    return path.join(this.root, `${v}.img`);
  }
  get ibu(): string {
    return path.join(this.root, '.ibu');
  }
  get journal(): string {
    return path.join(this.ibu, 'state.json');
  }
  manifest(v: string): string {
    return path.join(this.ibu, 'manifests', `${v}.json`);
  }
  get staging(): string {
    return path.join(this.ibu, 'staging');
  }
  /** A finished, verified download awaiting fsck and the rename into place. */
  staged(v: string): string {
    return path.join(this.staging, `${v}.img`);
  }
  /** The chunk download's work file (fetchRelease writes `<out>.partial`). */
  partial(v: string): string {
    return `${this.staged(v)}.partial`;
  }
  delta(from: string, to: string): string {
    return path.join(this.staging, `${from}_${to}.ibudelta`);
  }
  zfsStream(from: string, to: string): string {
    return path.join(this.staging, `zfs+${from}_${to}.ibudelta`);
  }
  get mount(): string {
    return path.join(this.ibu, 'mnt');
  }
  verityRecord(v: string): string {
    return path.join(this.ibu, 'verity', v);
  }
  get mountOld(): string {
    return path.join(this.ibu, 'mnt-old');
  }
  /** The /etc overlay of read-only image v; the initramfs mounts it (assets/initramfs/ibu-boot.sh names the same paths). */
  etcLayer(v: string): { upper: string; work: string; aside: string } {
    const d = path.join(this.ibu, 'etc', v);
    return { upper: path.join(d, 'upper'), work: path.join(d, 'work'), aside: path.join(d, 'aside') };
  }

  /** Installed versions, oldest first. */
  async installed(): Promise<string[]> {
    const names = await fsp.readdir(this.root).catch(() => [] as string[]);
    return names.flatMap((n) => imageVersion(n) ?? []).sort(compareVersions);
  }

  /** Versions with a finished download in staging. */
  async stagedVersions(): Promise<string[]> {
    const names = await fsp.readdir(this.staging).catch(() => [] as string[]);
    return names.flatMap((n) => imageVersion(n) ?? []);
  }

  /** Every staging file with the version it is downloaded for. */
  async stagingFiles(): Promise<Array<{ file: string; version: string }>> {
    const names = await fsp.readdir(this.staging).catch(() => [] as string[]);
    return names.flatMap((n) => {
      const version = stagingVersion(n);
      return version ? [{ file: path.join(this.staging, n), version }] : [];
    });
  }
}

/** `<v>.img` → v; anything else → null. */
export function imageVersion(name: string): string | null {
  if (!name.endsWith('.img')) return null;
  const v = name.slice(0, -4);
  return isValidVersion(v) ? v : null;
}

/** The target version a staging file belongs to (the image, its partial, or a delta or stream to it). */
export function stagingVersion(name: string): string | null {
  const v = /^(.+?)\.img(\.partial(\.journal)?)?$/.exec(name)?.[1] ?? /^.+_(.+)\.ibudelta(\.etag)?$/.exec(name)?.[1];
  return v && isValidVersion(v) ? v : null;
}
