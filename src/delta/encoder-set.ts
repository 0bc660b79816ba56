import type { Codec } from './compressed-stream.js';

/**
 * The encoders a machine can run RECOMPRESS ops with, codec → exact version, as a device tells the
 * server (`xz-5.4.1~gzip-1.12~zstd-1.5.7`): a delta recompresses only with encoders both sides
 * have in the same version, since another version may write other bytes. Pure: the versions are
 * found by recompressor.ts (`localEncoders`).
 */
export type EncoderSet = Partial<Record<Codec, string>>;

/** Every codec RECOMPRESS ops know, in the order sets are written. */
export const CODECS: readonly Codec[] = ['xz', 'gzip', 'zstd'];
const VERSION = /^\d{1,4}(\.\d{1,4}){0,3}$/;

/** `xz-5.4.1~zstd-1.5.7`, codecs in a fixed order; '' for none. */
export function formatEncoders(set: EncoderSet): string {
  return CODECS.filter((c) => set[c] !== undefined)
    .map((c) => `${c}-${set[c]}`)
    .join('~');
}

/** The set a text names; parts that are not `<codec>-<version>` of a known codec are ignored (a newer device may know more codecs). */
export function parseEncoders(text: string): EncoderSet {
  const out: EncoderSet = {};
  for (const part of text.split('~')) {
    const dash = part.indexOf('-');
    const codec = part.slice(0, dash) as Codec;
    const version = part.slice(dash + 1);
    if (dash > 0 && CODECS.includes(codec) && VERSION.test(version)) out[codec] = version;
  }
  return out;
}

/** The encoders both sides have in the same version: what a delta for that device may recompress with. */
export function commonEncoders(a: EncoderSet, b: EncoderSet): EncoderSet {
  const out: EncoderSet = {};
  for (const c of CODECS) if (a[c] !== undefined && a[c] === b[c]) out[c] = a[c];
  return out;
}

export const codecsOf = (set: EncoderSet): Codec[] => CODECS.filter((c) => set[c] !== undefined);
