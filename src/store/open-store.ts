import { HttpStore, type HttpStoreOptions } from './http-store.js';
import { LocalStore, type LocalStoreOptions } from './local-store.js';
import { isS3Url, S3Store, type S3StoreOptions } from './s3-store.js';
import type { Store } from './store.js';

/** `DIR` → LocalStore, `http(s)://...` → HttpStore, `s3://bucket/prefix` → S3Store. */
export function openStore(
  location: string,
  opts: { http?: HttpStoreOptions; local?: LocalStoreOptions; s3?: S3StoreOptions } = {},
): Store & { close?: () => Promise<void> } {
  if (/^https?:\/\//i.test(location)) return new HttpStore(location, opts.http);
  if (isS3Url(location)) return new S3Store(location, opts.s3);
  return new LocalStore(location, opts.local);
}

/** A store that can be written: a directory or an S3 bucket. */
export function openWriteStore(location: string, opts: { local?: LocalStoreOptions; s3?: S3StoreOptions } = {}): LocalStore | S3Store {
  if (isS3Url(location)) return new S3Store(location, opts.s3);
  return new LocalStore(location, opts.local);
}

export { HttpStore, LocalStore, S3Store };
export type { Store, WriteStore } from './store.js';
