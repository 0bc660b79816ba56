/**
 * Pure: what a compressed file's own headers say about how it was made, so that a delta can
 * carry the file uncompressed and the device can compress it again to the same bytes
 * (RECOMPRESS ops, docs/delta-format.md). Detection is by content, never by name.
 *
 * Only what can be reproduced is described: one xz stream with one LZMA2 filter (what kbuild
 * writes for `.ko.xz`: `xz --check=crc32 --lzma2=dict=1MiB`, multi-threaded since xz 5.6, so
 * its block headers carry the sizes), and gzip members without a stored name or time (what
 * `gzip -9n`, Debian's dh_compress, writes). Whether the encoder really reproduces the bytes
 * is checked when the delta is made; these are only the settings to try.
 */

export type Codec = 'xz' | 'gzip';

/** Encoder settings, stored in the op as numbers (never as a command line) and turned into arguments by `encoderArgs`. */
export interface EncoderParams {
  codec: Codec;
  /** xz preset or gzip level, 1..9. */
  level: number;
  /** xz integrity check id (0 none, 1 crc32, 4 crc64, 10 sha256); 0 for gzip. */
  check: number;
  /** xz LZMA2 dictionary bytes; 0 for gzip. */
  dict: number;
  /** xz: 1 single-threaded mode (no sizes in block headers), 2 multi-threaded mode; 0 for gzip. */
  threads: number;
}

export const CODEC_ID: Record<Codec, number> = { xz: 1, gzip: 2 };
export const CODEC_OF_ID: Record<number, Codec | undefined> = { 1: 'xz', 2: 'gzip' };

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const XZ_CHECK_NAME: Record<number, string> = { 0: 'none', 1: 'crc32', 4: 'crc64', 10: 'sha256' };
/**
 * Apply runs an encoder with this dictionary in a child process, which needs ~11× the
 * dictionary per thread (~94 MiB at 8 MiB): refuse more than `xz -6` (the default) uses.
 * kbuild uses 1 MiB. A hostile delta cannot make a device's encoder take more.
 */
export const MAX_XZ_DICT = 8 << 20;
const MIN_XZ_DICT = 4096;

/** The codec a file's first bytes announce, if any. */
export function codecOf(head: Buffer): Codec | undefined {
  if (head.length >= 12 && head.subarray(0, 6).equals(XZ_MAGIC)) return 'xz';
  if (head.length >= 18 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 8) return 'gzip';
  return undefined;
}

function lzma2Dict(props: number): number | undefined {
  const bits = props & 0x3f;
  if (bits > 40) return undefined;
  if (bits === 40) return 0xffffffff;
  return (2 | (bits & 1)) * 2 ** (Math.floor(bits / 2) + 11);
}

/** Reads a multibyte integer of the xz format (7 bits a byte, low first, at most 9 bytes). */
function varint(b: Buffer, at: number): { value: number; next: number } | undefined {
  let value = 0;
  for (let i = 0; i < 9 && at + i < b.length; i++) {
    const x = b[at + i]!;
    value += (x & 0x7f) * 2 ** (7 * i);
    if ((x & 0x80) === 0) return { value, next: at + i + 1 };
  }
  return undefined;
}

/**
 * The settings of a whole xz file and its uncompressed size, when the file is exactly one
 * stream whose blocks use LZMA2 alone (no BCJ or delta filter) and whose index adds up.
 */
export function xzFacts(file: Buffer): { params: EncoderParams; rawLength: number } | undefined {
  if (codecOf(file) !== 'xz' || file.length < 32 || file[6] !== 0) return undefined;
  const check = file[7]!;
  if (XZ_CHECK_NAME[check] === undefined) return undefined;
  // First block header: size byte, flags, optional sizes, then one filter.
  const hs = file[12]!;
  if (hs === 0) return undefined; // no block: an empty stream, nothing worth diffing
  const flags = file[13]!;
  if ((flags & 0x03) !== 0) return undefined; // more than one filter
  const threaded = (flags & 0xc0) === 0xc0;
  if ((flags & 0xc0) !== 0 && !threaded) return undefined;
  let at = 14;
  for (const present of [flags & 0x40, flags & 0x80]) {
    if (!present) continue;
    const v = varint(file, at);
    if (!v) return undefined;
    at = v.next;
  }
  const id = varint(file, at);
  if (!id || id.value !== 0x21) return undefined; // not LZMA2
  if (file[id.next] !== 1) return undefined; // LZMA2 has one property byte
  const dict = lzma2Dict(file[id.next + 1]!);
  if (dict === undefined || dict < MIN_XZ_DICT || dict > MAX_XZ_DICT) return undefined;
  // Footer: crc32, backward size, flags, "YZ"; the index before it lists every block.
  const f = file.length - 12;
  if (file[f + 10] !== 0x59 || file[f + 11] !== 0x5a || file[f + 8] !== 0 || file[f + 9] !== check) return undefined;
  const indexBytes = (file.readUInt32LE(f + 4) + 1) * 4;
  const ix = f - indexBytes;
  if (ix < 12 || file[ix] !== 0) return undefined;
  const n = varint(file, ix + 1);
  if (!n) return undefined;
  let p = n.next;
  let raw = 0;
  let blocks = 12;
  for (let i = 0; i < n.value; i++) {
    const unpadded = varint(file, p);
    if (!unpadded) return undefined;
    const size = varint(file, unpadded.next);
    if (!size) return undefined;
    p = size.next;
    blocks += Math.ceil(unpadded.value / 4) * 4;
    raw += size.value;
  }
  // One stream exactly: the blocks end where the index starts (no second stream, no padding).
  if (blocks !== ix || p > f) return undefined;
  return { params: { codec: 'xz', level: 6, check, dict, threads: threaded ? 2 : 1 }, rawLength: raw };
}

/**
 * The settings of a gzip file made without a stored name or time (`gzip -n`), and its
 * uncompressed size modulo 2³² (the trailer's ISIZE: the caller checks it after decoding).
 */
export function gzipFacts(file: Buffer): { params: EncoderParams; rawLengthMod32: number } | undefined {
  if (codecOf(file) !== 'gzip') return undefined;
  if (file[3] !== 0 || file.readUInt32LE(4) !== 0) return undefined; // a name, comment, extra field or time: not reproducible by `gzip -n`
  const xfl = file[8];
  const level = xfl === 2 ? 9 : xfl === 4 ? 1 : 6;
  return { params: { codec: 'gzip', level, check: 0, dict: 0, threads: 0 }, rawLengthMod32: file.readUInt32LE(file.length - 4) };
}

/** Whether stored settings are ones `encoderArgs` may turn into a command line (a delta is untrusted input). */
export function paramsValid(p: EncoderParams): boolean {
  if (!Number.isInteger(p.level) || p.level < 1 || p.level > 9) return false;
  if (p.codec === 'gzip') return p.check === 0 && p.dict === 0 && p.threads === 0;
  return (
    XZ_CHECK_NAME[p.check] !== undefined && Number.isInteger(p.dict) && p.dict >= MIN_XZ_DICT && p.dict <= MAX_XZ_DICT && (p.threads === 1 || p.threads === 2)
  );
}

/** The encoder's command line for these settings (compressing to stdout, or to `file.xz` / `file.gz` with -k). */
export function encoderArgs(p: EncoderParams): string[] {
  if (p.codec === 'gzip') return ['-n', `-${p.level}`];
  return [`-T${p.threads}`, `--check=${XZ_CHECK_NAME[p.check]}`, `--lzma2=preset=${p.level},dict=${p.dict}`];
}
