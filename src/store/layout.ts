import { IbuError } from '../errors.js';
import type { ChunkId } from './store.js';

/**
 * The store layout, shared by the local store, static HTTP servers/CDNs and `ibu serve`
 * (docs/releases.md has the table):
 *
 *   chunks/<id[0:4]>/<id>.zst            a zstd frame of one chunk, named by the hash of its plain bytes
 *   releases/<version>/manifest.json     the signed manifest
 *   releases/<version>/manifest.json.zst the same bytes, zstd-compressed (fetched first)
 *   channels/<channel>.json              { "channel", "versions": [ascending] }
 */
const ID_RE = /^[0-9a-f]{64}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function assertChunkId(id: string): ChunkId {
  if (!ID_RE.test(id)) throw new IbuError('BAD_REQUEST', `'${id}' is not a chunk id (64 lowercase hex digits)`);
  return id;
}

export function chunkPath(id: ChunkId): string {
  assertChunkId(id);
  return `chunks/${id.slice(0, 4)}/${id}.zst`;
}

export function manifestPath(version: string): string {
  assertName(version, 'version');
  return `releases/${version}/manifest.json`;
}

/** The same manifest bytes, zstd-compressed (what fetch downloads first: ~3x smaller). */
export function manifestZstPath(version: string): string {
  return `${manifestPath(version)}.zst`;
}

export function channelPath(channel: string): string {
  assertName(channel, 'channel');
  return `channels/${channel}.json`;
}

export function assertName(name: string, what: string): string {
  if (!NAME_RE.test(name) || name.includes('..')) {
    throw new IbuError('USAGE', `invalid ${what} '${name}': use letters, digits, '.', '_' and '-' (no '..', at most 64 characters)`);
  }
  return name;
}

/** A relative store path must stay inside the store: no absolute paths, no '..', no empty parts. */
export function assertRelPath(rel: string): string {
  const parts = rel.split('/');
  if (rel.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..') || rel.includes('\\') || rel.includes('\0')) {
    throw new IbuError('BAD_REQUEST', `'${rel}' is not a relative path inside the store`);
  }
  return rel;
}
