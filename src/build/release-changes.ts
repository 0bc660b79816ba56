import { IbuError } from '../errors.js';
import { diffImages } from '../image/diff.js';
import { Ext4Reader } from '../image/ext4/index.js';
import { IMAGE_INFO_PATH, parseImageInfo } from '../image/image-info.js';
import { readReleaseFile } from '../release/release-file.js';
import type { Manifest } from '../release/types.js';
import type { Store } from '../store/store.js';
import { diffFileKeys, packageChanges, type ReleaseDiff } from './release-diff.js';
import { PACKAGES_JSON_PATH, parseReleasePackages, type ReleasePackages } from './release-packages.js';

/** The release diff of two image files: package lists from /etc/ibu/packages.json, files compared by content. */
export function diffReleaseImages(fileA: string, fileB: string): ReleaseDiff {
  const a = Ext4Reader.open(fileA);
  try {
    const b = Ext4Reader.open(fileB);
    try {
      const files = diffImages(a, b);
      return {
        from: imageVersion(a, fileA),
        to: imageVersion(b, fileB),
        packages: packageChanges(imagePackages(a, fileA), imagePackages(b, fileB)),
        files: { added: files.added, removed: files.removed, changed: files.changed },
      };
    } finally {
      b.close();
    }
  } finally {
    a.close();
  }
}

/** The release diff of two published releases: file maps of the manifests, package lists read from their chunks. */
export async function diffPublishedReleases(store: Store, a: Manifest, b: Manifest): Promise<ReleaseDiff> {
  return {
    from: a.version,
    to: b.version,
    packages: packageChanges(await publishedPackages(store, a), await publishedPackages(store, b)),
    files: diffFileKeys(fileKeys(a), fileKeys(b)),
  };
}

/** A release's package list from its chunks, or null when it has none. */
export async function publishedPackages(store: Store, m: Manifest): Promise<ReleasePackages | null> {
  const raw = await readReleaseFile(store, m, PACKAGES_JSON_PATH);
  return raw ? parseReleasePackages(raw.toString('utf8'), `release ${m.version}`) : null;
}

// What identifies a path's content in a manifest: type, size, hash or target.
function fileKeys(m: Manifest): Map<string, string> {
  return new Map(m.files.map((f) => [f.path, `${f.type}:${f.size}:${f.hash ?? f.target ?? ''}`]));
}

function imagePackages(r: Ext4Reader, file: string): ReleasePackages | null {
  let raw: Buffer;
  try {
    raw = r.readFile(PACKAGES_JSON_PATH);
  } catch (err) {
    if (err instanceof IbuError && (err.code === 'IMAGE_PATH_NOT_FOUND' || err.code === 'NOT_FOUND')) return null;
    throw err;
  }
  return parseReleasePackages(raw.toString('utf8'), file);
}

function imageVersion(r: Ext4Reader, file: string): string {
  try {
    return parseImageInfo(r.readFile(IMAGE_INFO_PATH).toString('utf8')).version ?? file;
  } catch {
    return file;
  }
}
