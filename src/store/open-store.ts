import { HttpStore, type HttpStoreOptions } from './http-store.js';
import { LocalStore, type LocalStoreOptions } from './local-store.js';
import type { Store } from './store.js';

/** `DIR` → LocalStore, `http(s)://...` → HttpStore. */
export function openStore(location: string, opts: { http?: HttpStoreOptions; local?: LocalStoreOptions } = {}): Store & { close?: () => Promise<void> } {
  if (/^https?:\/\//i.test(location)) return new HttpStore(location, opts.http);
  return new LocalStore(location, opts.local);
}

export { HttpStore, LocalStore };
export type { Store, WriteStore } from './store.js';
