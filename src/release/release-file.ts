import { createHash } from 'node:crypto';
import { chunkDecompressor } from '../chunk/compress.js';
import { IbuError } from '../errors.js';
import type { Store } from '../store/store.js';
import type { Manifest } from './types.js';

/**
 * One file of a published release, read from its chunks without the whole image: the manifest's
 * file map gives the file's extents, the chunk list the chunks covering them. The result is
 * checked against the file's sha256 in the (signed) manifest. Used for small files such as
 * /etc/ibu/packages.json; null when the release has no such file.
 */
export async function readReleaseFile(store: Store, manifest: Manifest, filePath: string): Promise<Buffer | null> {
  const entry = manifest.files.find((f) => f.path === filePath);
  if (!entry || entry.type !== 'file') return null;
  const bs = manifest.image.blockSize;
  const out = Buffer.alloc(entry.size);
  const decompress = chunkDecompressor();
  const cache = new Map<string, Buffer>();
  for (const [logical, physical, length] of entry.extents ?? []) {
    let at = logical * bs;
    const end = Math.min((logical + length) * bs, entry.size);
    let img = physical * bs;
    while (at < end) {
      const c = manifest.chunks.find((ch) => ch.offset <= img && img < ch.offset + ch.size);
      if (!c) throw new IbuError('MANIFEST_INVALID', `no chunk covers image byte ${img} of ${filePath} in release ${manifest.version}.`);
      let data: Buffer;
      if (c.zero) data = Buffer.alloc(c.size);
      else {
        data = cache.get(c.id) ?? decompress(c.id, await store.getChunk(c.id), c.size);
        cache.set(c.id, data);
      }
      const n = Math.min(end - at, c.offset + c.size - img);
      data.copy(out, at, img - c.offset, img - c.offset + n);
      at += n;
      img += n;
    }
  }
  if (entry.hash && createHash('sha256').update(out).digest('hex') !== entry.hash) {
    throw new IbuError('CHUNK_INVALID', `${filePath} of release ${manifest.version} does not match its hash in the manifest: repair the store.`);
  }
  return out;
}
