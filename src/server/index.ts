/** The public surface of `ibu serve` as a library. */
export { createServer, DEFAULTS, type IbuServer, type ServeOptions } from './app.js';
export type { DeltaBuilder, DeltaBuildRequest } from './delta-builder.js';
export { runChild } from './delta-builder.js';
export type { DeltaJob, DeltaQueue, JobState, RetryPolicy } from './delta-queue.js';
