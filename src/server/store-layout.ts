import * as path from 'node:path';
import { channelPath, chunkPath, manifestPath } from '../store/layout.js';
import { LocalStore } from '../store/local-store.js';
import type { ListableStore, WriteStore } from '../store/store.js';

/** Where the release side lives: the data directory itself, or an S3 bucket (`ibu serve --store s3://...`). */
export type ReleaseStore = WriteStore & ListableStore & { close?: () => Promise<void>; deleteFile?: (rel: string) => Promise<void> };

/**
 * Where things live in the data directory `ibu serve --data DIR` serves. The release side
 * (chunks/, releases/, channels/) is the store `ibu release publish --store DIR` writes, laid out
 * by src/store/layout.ts; the server only adds cache/ and server.sqlite beside it. Callers pass
 * ids and versions already validated by the route schemas (the layout functions check again).
 */
export class StoreLayout {
  /** Read releases through this (chunks, manifests, channels); the paths below are the local directory's. */
  readonly releases: ReleaseStore;
  /** Built deltas: `<data>/cache/deltas`, or a directory every replica shares (`ibu serve --delta-dir`). */
  readonly deltasDir: string;
  constructor(
    readonly root: string,
    releases?: ReleaseStore,
    deltasDir?: string,
  ) {
    this.releases = releases ?? new LocalStore(root);
    this.deltasDir = deltasDir ? path.resolve(deltasDir) : path.join(root, 'cache', 'deltas');
  }
  /** True when the release side is the data directory (files can be streamed from disk). */
  get releasesLocal(): boolean {
    return this.releases instanceof LocalStore && this.releases.root === this.root;
  }
  chunk(id: string): string {
    return path.join(this.root, chunkPath(id));
  }
  get releasesDir(): string {
    return path.join(this.root, 'releases');
  }
  releaseDir(version: string): string {
    return path.join(this.root, 'releases', version);
  }
  manifest(version: string): string {
    return path.join(this.root, manifestPath(version));
  }
  get channelsDir(): string {
    return path.join(this.root, 'channels');
  }
  channel(name: string): string {
    return path.join(this.root, channelPath(name));
  }
  get cacheDir(): string {
    return path.join(this.root, 'cache');
  }
  get imagesDir(): string {
    return path.join(this.root, 'cache', 'images');
  }
  /** `_` cannot occur in a version, so the name is unambiguous (`1-2` + `3` vs `1` + `2-3`). */
  delta(from: string, to: string): string {
    return path.join(this.deltasDir, `${from}_${to}.ibudelta`);
  }
  image(version: string): string {
    return path.join(this.imagesDir, `${version}.img`);
  }
  get lock(): string {
    return path.join(this.root, 'cache', 'server.lock');
  }
  get database(): string {
    return path.join(this.root, 'server.sqlite');
  }
}
