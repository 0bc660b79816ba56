import { zstdBinding as binding } from '../chunk/compress.js';
import { MAX_ZSTD_WINDOW, type EncoderParams } from './compressed-stream.js';

/**
 * The zstd encoder and decoder of RECOMPRESS ops: the libzstd bundled in zstd-napi (pinned by
 * package-lock.json), in-process, not the system `zstd`. Two zstd versions write different
 * bytes at the same level (1.5.4, Debian 12's, and 1.5.7 differ at -3 and -9), so the encoder
 * must be the same on the machine that makes the delta and on the device: the package is,
 * whatever either system has installed (a Debian 13 appliance has no `zstd` unless it asks
 * for one). Its libzstd is 1.5.7, Debian 13's; fed the way the `zstd` CLI feeds it (128 KiB
 * at a time, the content size pledged only for a file), it gives Debian 13's
 * `zstd -q -9` frames back bit for bit (docs/delta-format.md).
 */

/** The version the delta records for zstd and apply checks ("1.5.7"). */
export function zstdVersion(): string {
  return binding.versionString();
}

/** What the `zstd` CLI reads from its input at a time (ZSTD_CStreamInSize): it ends blocks at the same places only when fed alike. */
const CLI_READ = 128 << 10;
const WINDOW_LOG_MAX = Math.log2(MAX_ZSTD_WINDOW);

/**
 * Compresses like `zstd -<level> [--no-check] [-T1 | --single-thread]`: from a pipe (`dict` 0:
 * no content size) or from a file (`dict` 1: its size pledged, so stored and used to size the
 * parameters). Multi-threaded mode writes the same bytes for any number of workers, so `workers` only sets the speed.
 */
export function zstdCompress(p: EncoderParams, raw: Buffer, workers = 1): Buffer {
  const out: Buffer[] = [];
  encode(p, raw, workers, (piece) => void out.push(Buffer.from(piece)));
  return Buffer.concat(out);
}

/**
 * `zstdCompress` for a frame whose size is known (apply: the op's target length), written straight
 * into one buffer of that size: the output is held once, not as pieces and then their concatenation
 * (~2× the frame: 22 MB on a 36 MB initramfs archive). Returns the bytes written, or -1 when the frame
 * would be longer than `into` (then it is not the target frame).
 */
export function zstdCompressInto(p: EncoderParams, raw: Buffer, into: Buffer, workers = 1): number {
  let at = 0;
  const fits = encode(p, raw, workers, (piece) => {
    // Longer than the target: not its frame, and encoding the rest would be wasted.
    if (at + piece.length > into.length) return false;
    at += piece.copy(into, at);
    return true;
  });
  return fits ? at : -1;
}

/**
 * `zstdCompress`'s frame compared with `packed` as it is produced: true when they are the same
 * bytes. Make's level trials: a wrong level stops at its first differing piece, and no frame is held.
 */
export function zstdReproduces(p: EncoderParams, raw: Buffer, packed: Buffer, workers = 1): boolean {
  let at = 0;
  const done = encode(p, raw, workers, (piece) => {
    if (!piece.equals(packed.subarray(at, at + piece.length))) return false;
    at += piece.length;
    return true;
  });
  return done && at === packed.length;
}

/**
 * One compression context for every encode of the process, reset before each. A context is freed
 * only when V8 collects its wrapper, and V8 does not see its native memory (tens of MiB in
 * multi-threaded mode): a new one per encode let make's level trials pile them up.
 */
let shared: InstanceType<typeof binding.CCtx> | undefined;

/**
 * Feeds `raw` through the compression context as the CLI does, handing each produced piece to
 * `emit` (it is overwritten next); `emit` returning false stops the encode (returns false).
 */
function encode(p: EncoderParams, raw: Buffer, workers: number, emit: (piece: Buffer) => boolean | void): boolean {
  const c = (shared ??= new binding.CCtx());
  c.reset(binding.ResetDirective.sessionAndParameters);
  c.setParameter(binding.CParameter.compressionLevel, p.level);
  c.setParameter(binding.CParameter.checksumFlag, p.check);
  if (p.threads) c.setParameter(binding.CParameter.nbWorkers, Math.max(1, workers));
  if (p.dict === 1) c.setPledgedSrcSize(raw.length);
  const buf = Buffer.allocUnsafe(1 << 20);
  for (let at = 0; at < raw.length;) {
    const [, produced, consumed] = c.compressStream2(buf, raw.subarray(at, Math.min(raw.length, at + CLI_READ)), binding.EndDirective.continue);
    if (produced > 0 && emit(buf.subarray(0, produced)) === false) return false;
    at += consumed;
  }
  for (;;) {
    const [left, produced] = c.compressStream2(buf, Buffer.alloc(0), binding.EndDirective.end);
    if (produced > 0 && emit(buf.subarray(0, produced)) === false) return false;
    if (left === 0) return true;
  }
}

function decoder(): InstanceType<typeof binding.DCtx> {
  const d = new binding.DCtx();
  // A frame that needs a larger window than any setting a delta may name is refused, not decoded.
  d.setParameter(binding.DParameter.windowLogMax, WINDOW_LOG_MAX);
  return d;
}

/**
 * Decodes one whole frame into `into`, which must be exactly its content: false when the frame
 * is damaged, truncated, followed by anything, needs a larger window, or decodes to another
 * size (a decompression bomb stops at one byte past `into`).
 */
export function zstdDecodeInto(frame: Buffer, into: Buffer): boolean {
  try {
    const d = decoder();
    const spare = Buffer.alloc(1);
    let inAt = 0;
    let outAt = 0;
    for (;;) {
      const dst = outAt < into.length ? into.subarray(outAt) : spare;
      const [left, produced, consumed] = d.decompressStream(dst, frame.subarray(inAt));
      if (dst === spare && produced > 0) return false;
      outAt += produced;
      inAt += consumed;
      if (left === 0) return inAt === frame.length && outAt === into.length;
      if (produced === 0 && consumed === 0) return false; // truncated
    }
  } catch {
    return false;
  }
}

/**
 * Decodes one whole frame whose size is not known, up to `max` bytes; undefined as `zstdDecodeInto`
 * fails. Twice: once to count, then into a buffer of that size. Collecting pieces and concatenating
 * them held each content twice, as garbage no collection reclaimed during make's synchronous
 * level trials (+~140 MiB on an initramfs pair's two 36 MB main archives).
 */
export function zstdDecode(frame: Buffer, max: number): Buffer | undefined {
  let total = 0;
  try {
    const d = decoder();
    let inAt = 0;
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const [left, produced, consumed] = d.decompressStream(buf, frame.subarray(inAt));
      total += produced;
      if (total > max) return undefined;
      inAt += consumed;
      if (left === 0) {
        if (inAt !== frame.length) return undefined;
        break;
      }
      if (produced === 0 && consumed === 0) return undefined;
    }
  } catch {
    return undefined;
  }
  const out = Buffer.allocUnsafe(total);
  return zstdDecodeInto(frame, out) ? out : undefined;
}
