import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError, isIbuError } from '../errors.js';
import { Keyring } from '../release/keyring.js';
import { parseAndVerifyManifest } from '../release/manifest.js';
import type { Manifest } from '../release/types.js';
import { manifestPath } from '../store/layout.js';
import type { Store } from '../store/store.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { ImagesDir } from './images-dir.js';

/**
 * Signed manifests of targets, fetched from the release store once and kept beside the images
 * (`.ibu/manifests/<v>.json`). Every read verifies the signature again: the copy sits on a
 * writable disk.
 */
export class ManifestCache {
  private keys: Keyring | null = null;

  constructor(
    private readonly dir: ImagesDir,
    private readonly store: Store | null,
    private readonly o: { keyring: string; channel: string },
  ) {}

  async keyring(): Promise<Keyring> {
    this.keys ??= await Keyring.load(this.o.keyring);
    return this.keys;
  }

  /** The cached manifest of `v`, verified again; fetched when not cached. */
  async get(v: string): Promise<Manifest> {
    const bytes = await fsp.readFile(this.dir.manifest(v)).catch(() => null);
    if (bytes) return parseAndVerifyManifest(bytes, await this.keyring(), `the cached manifest of ${v}`).manifest;
    return this.fetch(v);
  }

  /** Fetches, verifies and caches the manifest of `v` (it must be on this device's channel). */
  async fetch(v: string): Promise<Manifest> {
    const store = this.store;
    if (!store) throw new IbuError('CONFIG_INVALID', 'No release source: set server.url or download.store in the agent config.');
    const bytes = await store.getFile(manifestPath(v)).catch((err) => {
      if (isIbuError(err, 'NOT_FOUND')) throw new IbuError('RELEASE_NOT_FOUND', `Release ${v} is not in ${store.location}; check the version.`, { cause: err });
      throw err;
    });
    const { manifest } = parseAndVerifyManifest(bytes, await this.keyring(), `the manifest of ${v} from ${store.location}`);
    if (manifest.version !== v) throw new IbuError('MANIFEST_INVALID', `The manifest fetched for ${v} is for ${manifest.version}; the store is inconsistent.`);
    if (manifest.channel !== this.o.channel) {
      throw new IbuError('MANIFEST_INVALID', `Release ${v} is on channel '${manifest.channel}', this device follows '${this.o.channel}'.`);
    }
    await fsp.mkdir(path.dirname(this.dir.manifest(v)), { recursive: true });
    await writeFileAtomic(this.dir.manifest(v), bytes);
    return manifest;
  }

  async remove(v: string): Promise<void> {
    await fsp.rm(this.dir.manifest(v), { force: true });
  }
}
