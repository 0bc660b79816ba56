/**
 * The simulator's young generation (MiB per semi-space; V8's default is 16): measured on 80,000
 * devices, a scavenge every ~250 ms of 15-30 ms at 16, every ~2.7 s at 64 (docs/benchmarks.md).
 * `ibu fleet simulate` and `npm run bench:fleet` run with it; the server keeps V8's default.
 */
export const SIMULATOR_SEMI_SPACE_MIB = 64;

/** Whether a node option sizes the young generation (the simulator's, not for the server it spawns). */
export const isYoungGenerationFlag = (arg: string): boolean => arg.startsWith('--max-semi-space-size');

/** Whether this process was started with its young generation sized (a flag or NODE_OPTIONS). */
export const hasYoungGenerationSetting = (): boolean => [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].some(isYoungGenerationFlag);

/** NODE_OPTIONS without the young-generation setting. */
export const withoutYoungGeneration = (nodeOptions: string): string =>
  nodeOptions
    .split(/\s+/)
    .filter((a) => !isYoungGenerationFlag(a))
    .join(' ');
