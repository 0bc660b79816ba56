import type { EncoderSet } from '../delta/encoder-set.js';
import type { DeltaServiceImpl } from './delta-service.js';
import type { Precomputer } from './precompute.js';
import type { ReleaseCatalog } from './release-catalog.js';
import type { StoreLayout } from './store-layout.js';

/** What the route modules share; built once in app.ts. */
export interface ServerContext {
  layout: StoreLayout;
  catalog: ReleaseCatalog;
  deltas: DeltaServiceImpl;
  precompute: Precomputer;
  adminToken: string | undefined;
  /** The encoders this server builds RECOMPRESS deltas with ({}: never; src/server/recompress-deltas.ts). */
  encoders: EncoderSet;
}
