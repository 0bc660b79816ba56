import { formatEncoders, parseEncoders, type EncoderSet } from '../delta/encoder-set.js';

/**
 * Deltas with RECOMPRESS ops (docs/delta-format.md "Compressed files") for devices that can
 * re-encode: a device names its encoders and their versions (`?encoders=xz-5.8.1~gzip-1.13~zstd-1.5.7`),
 * and when some match the server's own, the delta is built with `--recompress` for those codecs
 * only. Such a delta is another job of the shared queue, keyed `rc~<encoders>+<from>` ('~' and '+'
 * cannot occur in a version), so devices with other encoders keep getting the plain delta of the
 * pair, and a CDN caches each variant under its own URL.
 */
export const RC_JOB_PREFIX = 'rc~';

export function recompressJobFrom(from: string, encoders: EncoderSet): string {
  const e = formatEncoders(encoders);
  return e ? `${RC_JOB_PREFIX}${e}+${from}` : from;
}

/** The version a job key builds from, and the encoders a recompressing job may use. */
export function parseDeltaJob(key: string): { from: string; encoders: EncoderSet | null } {
  if (!key.startsWith(RC_JOB_PREFIX)) return { from: key, encoders: null };
  const plus = key.lastIndexOf('+');
  return { from: key.slice(plus + 1), encoders: parseEncoders(key.slice(RC_JOB_PREFIX.length, plus)) };
}
