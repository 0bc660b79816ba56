/**
 * File-aware binary deltas between two ibu images (docs/delta-format.md): `makeDelta` plans
 * ZERO / COPY / PATCH / REPLACE ops over the target image and encodes them; `applyDelta`
 * reads the ops back and rebuilds the target bit for bit in bounded memory.
 */
export { makeDelta, DEFAULT_LEVEL, type MakeDeltaOptions } from './make.js';
export { applyDelta, type ApplyDeltaOptions } from './apply.js';
export { readDeltaHeader, readDelta } from './delta-file.js';
export { describeDelta, type ByteTally, type DeltaInfo, type FileTally } from './info.js';
export type { ApplyResult, DeltaHeader, DeltaOp, DeltaStats, FailedOp, ProgressEvent, Range, Segment } from './types.js';
