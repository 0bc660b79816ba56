/**
 * Pure: what a compressed file's own headers say about how it was made, so that a delta can
 * carry the file uncompressed and the device can compress it again to the same bytes
 * (RECOMPRESS ops, docs/delta-format.md). Detection is by content, never by name.
 *
 * Only what can be reproduced is described: one xz stream with one LZMA2 filter (what kbuild
 * writes for `.ko.xz`: `xz --check=crc32 --lzma2=dict=1MiB`, multi-threaded since xz 5.6, so
 * its block headers carry the sizes), and gzip members without a stored name or time (what
 * `gzip -9n`, Debian's dh_compress, writes), and single zstd frames (Debian 13's initramfs-tools:
 * `zstd -q -9`), whose level make finds by trying. Whether the encoder really reproduces the bytes
 * is checked when the delta is made; these are only the settings to try.
 */

export type Codec = 'xz' | 'gzip' | 'zstd';

/** Encoder settings, stored in the op as numbers (never as a command line) and turned into arguments by `encoderArgs`. */
export interface EncoderParams {
  codec: Codec;
  /** xz preset or gzip level, 1..9; zstd level 1..19. */
  level: number;
  /** xz integrity check id (0 none, 1 crc32, 4 crc64, 10 sha256); 0 for gzip; zstd: 1 with the frame checksum, 0 without. */
  check: number;
  /** xz LZMA2 dictionary bytes; 0 for gzip; zstd: 1 when the frame stores its content size (compressed from a file), 0 when not (from a pipe). */
  dict: number;
  /** xz: 1 single-threaded mode (no sizes in block headers), 2 multi-threaded mode; 0 for gzip; zstd: 0 `--single-thread`, 1 multi-threaded mode. */
  threads: number;
}

export const CODEC_ID: Record<Codec, number> = { xz: 1, gzip: 2, zstd: 3 };
export const CODEC_OF_ID: Record<number, Codec | undefined> = { 1: 'xz', 2: 'gzip', 3: 'zstd' };

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const XZ_CHECK_NAME: Record<number, string> = { 0: 'none', 1: 'crc32', 4: 'crc64', 10: 'sha256' };
/**
 * Apply runs an encoder with this dictionary in a child process, which needs ~11× the
 * dictionary per thread (~94 MiB at 8 MiB): refuse more than `xz -6` (the default) uses.
 * kbuild uses 1 MiB. A hostile delta cannot make a device's encoder take more.
 */
export const MAX_XZ_DICT = 8 << 20;
const MIN_XZ_DICT = 4096;

const ZSTD_MAGIC = 0xfd2fb528;
/**
 * Levels above 19 need `--ultra` and windows up to 128 MiB on the device; the frame's own
 * window is refused above this too (a hostile delta cannot make the device's decoder or
 * encoder take more). Level 19 without a known size uses 8 MiB.
 */
export const MAX_ZSTD_WINDOW = 8 << 20;
export const MAX_ZSTD_LEVEL = 19;
/**
 * zstd frames do not record their level, so make tries these, most likely first: Debian 13's
 * initramfs-tools writes `zstd -q -9` (its default COMPRESSLEVEL; `-T0` too unless
 * SOURCE_DATE_EPOCH is set), older ones and dracut -19, the CLI's default is 3.
 */
export const ZSTD_LEVELS = [9, 19, 3, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18];

/** The codec a file's first bytes announce, if any. */
export function codecOf(head: Buffer): Codec | undefined {
  if (head.length >= 12 && head.subarray(0, 6).equals(XZ_MAGIC)) return 'xz';
  if (head.length >= 18 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 8) return 'gzip';
  if (head.length >= 12 && head.readUInt32LE(0) === ZSTD_MAGIC) return 'zstd';
  return undefined;
}

/** What a zstd frame's header says: whether it stores its content size and a checksum, its window; and that the file is that one frame, whole. */
export interface ZstdFacts {
  /** The content size stored in the frame, when it is (the CLI stores it when it compresses a file, not a pipe). */
  contentSize: number | undefined;
  check: number;
  window: number;
}

/**
 * The header facts of a file that is exactly one zstd frame: no dictionary id, a window of at
 * most MAX_ZSTD_WINDOW, blocks walked to the end (raw, RLE and compressed blocks, the last one
 * flagged), then the checksum when the header announces one, then nothing. Anything else
 * (skippable frames, two frames, trailing bytes, a truncated frame) is undefined.
 */
export function zstdFacts(file: Buffer): ZstdFacts | undefined {
  if (codecOf(file) !== 'zstd') return undefined;
  const fhd = file[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  if ((fhd & 0x08) !== 0 || (fhd & 0x03) !== 0) return undefined; // reserved bit, or a dictionary id
  const check = (fhd >> 2) & 1;
  let at = 5;
  let window = 0;
  if (!single) {
    const wd = file[at++]!;
    const exp = wd >> 3;
    const base = 2 ** (10 + exp);
    window = base + (base / 8) * (wd & 7);
  }
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  let contentSize: number | undefined;
  if (fcsBytes === 1) contentSize = file[at]!;
  else if (fcsBytes === 2) contentSize = file.readUInt16LE(at) + 256;
  else if (fcsBytes === 4) contentSize = file.readUInt32LE(at);
  else if (fcsBytes === 8) {
    const big = file.readBigUInt64LE(at);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    contentSize = Number(big);
  }
  at += fcsBytes;
  if (single) window = contentSize!;
  if (window > MAX_ZSTD_WINDOW) return undefined;
  for (;;) {
    if (at + 3 > file.length) return undefined;
    const bh = file[at]! | (file[at + 1]! << 8) | (file[at + 2]! << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) return undefined;
    at += 3 + (type === 1 ? 1 : size);
    if (last) break;
  }
  at += check * 4;
  if (at !== file.length) return undefined;
  return { contentSize, check, window };
}

/** The settings make tries for a zstd frame, most likely first (the level is not in the frame; its header gives the rest). */
export function zstdCandidates(f: ZstdFacts): EncoderParams[] {
  const out: EncoderParams[] = [];
  for (const threads of [1, 0]) {
    for (const level of ZSTD_LEVELS) out.push({ codec: 'zstd', level, check: f.check, dict: f.contentSize === undefined ? 0 : 1, threads });
  }
  return out;
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
  if (!Number.isInteger(p.level) || p.level < 1 || p.level > (p.codec === 'zstd' ? MAX_ZSTD_LEVEL : 9)) return false;
  if (p.codec === 'gzip') return p.check === 0 && p.dict === 0 && p.threads === 0;
  if (p.codec === 'zstd') return (p.check === 0 || p.check === 1) && (p.dict === 0 || p.dict === 1) && (p.threads === 0 || p.threads === 1);
  return (
    XZ_CHECK_NAME[p.check] !== undefined && Number.isInteger(p.dict) && p.dict >= MIN_XZ_DICT && p.dict <= MAX_XZ_DICT && (p.threads === 1 || p.threads === 2)
  );
}

/**
 * The encoder's command line for these settings (compressing to stdout, or to `file.xz` /
 * `file.gz` with -k). zstd's multi-threaded mode writes the same bytes for any number of
 * workers (checked at make all the same), so one worker is asked for.
 */
export function encoderArgs(p: EncoderParams): string[] {
  if (p.codec === 'gzip') return ['-n', `-${p.level}`];
  if (p.codec === 'zstd') return [`-${p.level}`, p.check ? '--check' : '--no-check', p.threads ? '-T1' : '--single-thread'];
  return [`-T${p.threads}`, `--check=${XZ_CHECK_NAME[p.check]}`, `--lzma2=preset=${p.level},dict=${p.dict}`];
}
