import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { IbuError } from '../errors.js';
import { encoderArgs, MAX_XZ_DICT, ZSTD_LEVELS, type Codec, type EncoderParams } from './compressed-stream.js';
import { CODECS, type EncoderSet } from './encoder-set.js';
import { zstdCompress, zstdCompressInto, zstdDecode, zstdReproduces, zstdDecodeInto, zstdVersion } from './zstd-recompress.js';

/**
 * The encoders behind RECOMPRESS ops: the system `xz`, `gzip` and `zstd`, whose exact versions the
 * delta records and apply checks (an encoder of another version may write other bytes; the
 * op hashes would catch it, but a clear refusal up front is better than a fallback for
 * thousands of files). Many files go through one process (`xz -k f1 f2 …`) and the files are
 * split over `jobs` processes at once: a process per file cost more than compressing a small
 * module, and one process uses one core for files under xz's block size.
 */

const versions = new Map<Codec, string>();
/** xz needs about the dictionary size to decode; MAX_XZ_DICT plus room. */
const DECODE_MEMLIMIT = MAX_XZ_DICT + (16 << 20);
/** The decoders of concatenated streams, with their memory limits (a stream needing more is refused, not decoded). */
const DECODER: Record<'xz', string[]> = {
  xz: ['xz', '-dcq', `--memlimit-decompress=${DECODE_MEMLIMIT}`],
};

/** The encoder's version (`5.4.1` for `xz (XZ Utils) 5.4.1`), or TOOL_MISSING when it is not installed. */
export function encoderVersion(codec: Codec): string {
  if (codec === 'zstd') return zstdVersion();
  const known = versions.get(codec);
  if (known) return known;
  let out: string;
  try {
    out = execFileSync(codec, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch (err) {
    throw new IbuError('TOOL_MISSING', `${codec} is needed to recompress files of this delta and is not installed (run scripts/install-deps.sh).`, {
      cause: err,
    });
  }
  const v = /(\d+\.\d+(?:\.\d+)?)/.exec(out.split('\n')[0] ?? '')?.[1] ?? out.split('\n')[0]!.trim();
  versions.set(codec, v);
  return v;
}

/** The encoders installed here, by version (a codec whose tool is missing is left out): what this machine can recompress with. */
export function localEncoders(): EncoderSet {
  const out: EncoderSet = {};
  for (const codec of CODECS) {
    try {
      out[codec] = encoderVersion(codec);
    } catch {
      // not installed: no RECOMPRESS ops of this codec
    }
  }
  return out;
}

/** Checks the installed encoders are the versions the delta was made with (TOOL_MISSING otherwise, before any output exists). */
export function checkEncoders(wanted: Partial<Record<Codec, string>>, delta: string): void {
  for (const [codec, v] of Object.entries(wanted) as Array<[Codec, string]>) {
    const have = encoderVersion(codec);
    if (have !== v && codec === 'zstd') {
      throw new IbuError(
        'TOOL_MISSING',
        `The delta ${delta} recompresses files with libzstd ${v}, but this ibu bundles libzstd ${have} (zstd-napi); its output may differ. ` +
          'Apply it with the ibu version that made it, or use a delta made without --recompress, or download the full image.',
        { details: { codec, wanted: v, installed: have } },
      );
    }
    if (have !== v) {
      throw new IbuError(
        'TOOL_MISSING',
        `The delta ${delta} recompresses files with ${codec} ${v}, but ${codec} ${have} is installed; its output may differ. ` +
          `Install ${codec} ${v}, or use a delta made without --recompress, or download the full image.`,
        { details: { codec, wanted: v, installed: have } },
      );
    }
  }
}

/** Runs a tool; its stdout is collected up to `maxOut` bytes (more kills it: a decompression bomb from a hostile delta). */
function spawnBuffers(cmd: string, args: string[], input: Buffer | undefined, cwd?: string, maxOut = Infinity): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'], cwd });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    child.stdout!.on('data', (d: Buffer) => {
      outBytes += d.length;
      if (outBytes > maxOut) child.kill('SIGKILL');
      else out.push(d);
    });
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(new IbuError(e.code === 'ENOENT' ? 'TOOL_MISSING' : 'TOOL_FAILED', `${cmd}: ${e.message} (run scripts/install-deps.sh)`, { cause: e })),
    );
    child.on('close', (code) => {
      if (code !== 0)
        reject(new IbuError('TOOL_FAILED', `${cmd} ${args.slice(0, 6).join(' ')} failed (exit ${code}): ${Buffer.concat(err).toString().trim().slice(-500)}`));
      else resolve(Buffer.concat(out));
    });
    if (input) {
      child.stdin!.on('error', () => {});
      child.stdin!.end(input);
    }
  });
}

/**
 * Decodes whole compressed files, each into its buffer (whose length is the size expected).
 * gzip in-process (any inflate gives the same bytes); xz and zstd through one `xz -dc` / `zstd -dc`
 * fed the files back to back (concatenated streams decode to the concatenated contents), its output copied
 * straight into the buffers, so nothing is held twice. Returns which files decoded to exactly
 * their expected size; when a batch fails, each file is tried alone to find which.
 */
export async function decompressInto(codec: Codec, files: Buffer[], into: Buffer[]): Promise<boolean[]> {
  if (codec === 'gzip') {
    return files.map((f, i) => {
      try {
        const raw = gunzipSync(f, { maxOutputLength: into[i]!.length + 1 });
        return raw.length === into[i]!.length && raw.copy(into[i]!) === raw.length;
      } catch {
        return false;
      }
    });
  }
  if (codec === 'zstd') return files.map((f, i) => zstdDecodeInto(f, into[i]!));
  const total = into.reduce((a, b) => a + b.length, 0);
  const [cmd, ...args] = DECODER[codec];
  const ok = await new Promise<boolean>((resolve, reject) => {
    // The memory limit refuses streams that would need a larger dictionary than any encoder setting a delta may name.
    const child = spawn(cmd!, args, { stdio: ['pipe', 'pipe', 'ignore'] });
    let k = 0;
    let at = 0;
    let over = false;
    child.stdout.on('data', (d: Buffer) => {
      for (let p = 0; p < d.length && !over;) {
        while (k < into.length && at === into[k]!.length) {
          k++;
          at = 0;
        }
        if (k === into.length) {
          over = true; // more output than expected: a decompression bomb or the wrong files
          child.kill('SIGKILL');
          break;
        }
        const n = d.copy(into[k]!, at, p);
        at += n;
        p += n;
      }
    });
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(new IbuError(e.code === 'ENOENT' ? 'TOOL_MISSING' : 'TOOL_FAILED', `${cmd}: ${e.message} (run scripts/install-deps.sh)`, { cause: e })),
    );
    child.on('close', (code) => {
      const filled = into.slice(0, k).reduce((a, b) => a + b.length, 0) + at;
      resolve(code === 0 && !over && filled === total);
    });
    child.stdin.on('error', () => {});
    for (const f of files) child.stdin.write(f);
    child.stdin.end();
  });
  if (ok) return files.map(() => true);
  if (files.length === 1) return [false];
  const out: boolean[] = [];
  for (let i = 0; i < files.length; i++) out.push(...(await decompressInto(codec, [files[i]!], [into[i]!])));
  return out;
}

/** `decompressInto` into new buffers; `undefined` for a file that did not decode to its expected size. */
export async function decompressMany(codec: Codec, files: Buffer[], rawLengths: number[]): Promise<Array<Buffer | undefined>> {
  const into = rawLengths.map((n) => Buffer.allocUnsafe(n));
  const ok = await decompressInto(codec, files, into);
  return into.map((b, i) => (ok[i] ? b : undefined));
}

/**
 * Compresses each buffer as its own file with the given settings, `jobs` encoder processes at
 * once, in a fresh directory under `work` that is removed afterwards. Returns the compressed
 * files in input order. `sizes`: the lengths the outputs must have (apply knows them), so zstd
 * writes each straight into a buffer of that size; an output that is not that long comes back
 * with another length (its hash check then fails).
 */
export async function compressMany(params: EncoderParams, raws: Buffer[], work: string, jobs: number, sizes?: number[]): Promise<Buffer[]> {
  if (raws.length === 0) return [];
  if (params.codec === 'zstd') return compressZstd(params, raws, jobs, sizes);
  const dir = fs.mkdtempSync(path.join(work, 'rc-'));
  try {
    const names = raws.map((r, i) => {
      const n = `f${i}`;
      fs.writeFileSync(path.join(dir, n), r);
      return n;
    });
    // Split by bytes into `jobs` groups of similar size (largest first, to the lightest group).
    const groups: Array<{ bytes: number; names: string[] }> = Array.from({ length: Math.min(jobs, raws.length) }, () => ({ bytes: 0, names: [] }));
    const order = raws.map((r, i) => i).sort((a, b) => raws[b]!.length - raws[a]!.length);
    for (const i of order) {
      const g = groups.reduce((m, x) => (x.bytes < m.bytes ? x : m));
      g.bytes += raws[i]!.length;
      g.names.push(names[i]!);
    }
    const ext = params.codec === 'xz' ? '.xz' : '.gz';
    await Promise.all(groups.map((g) => spawnBuffers(params.codec, [...encoderArgs(params), '-q', '-k', '-f', '--', ...g.names], undefined, dir)));
    return names.map((n) => fs.readFileSync(path.join(dir, n + ext)));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** zstd, in-process (`zstd-recompress.ts`), a file at a time; multi-threaded mode uses `jobs` workers. */
function compressZstd(params: EncoderParams, raws: Buffer[], jobs: number, sizes?: number[]): Buffer[] {
  return raws.map((r, i) => {
    if (sizes?.[i] === undefined) return zstdCompress(params, r, jobs);
    const into = Buffer.allocUnsafe(sizes[i]);
    const n = zstdCompressInto(params, r, into, jobs);
    return n < 0 ? Buffer.alloc(0) : into.subarray(0, n);
  });
}

/** A zstd frame's content when it is at most `max` bytes (make: a frame without a content size says nothing of it until decoded). */
export function decodeZstd(frame: Buffer, max: number): Buffer | undefined {
  return zstdDecode(frame, max);
}

/**
 * Tries zstd settings on a frame's content until one gives the frame back bit for bit. For
 * frames made from a pipe, each setting is first tried on the first 2 MiB alone: zstd writes
 * the start of a frame from the start of its input, so a wrong level shows in the first
 * blocks at a fraction of a whole encoding.
 */
export function findZstdParams(candidates: EncoderParams[], raw: Buffer, packed: Buffer, jobs: number): EncoderParams | undefined {
  const TRIAL = 2 << 20;
  for (const c of candidates) {
    // A large frame with its size stored cannot be tried on a prefix: only the likeliest levels are tried whole.
    if (c.dict === 1 && raw.length > TRIAL && !ZSTD_LEVELS.slice(0, 3).includes(c.level)) continue;
    if (c.dict === 0 && raw.length > TRIAL) {
      const head = zstdCompress(c, raw.subarray(0, TRIAL), jobs);
      const n = Math.min(64 << 10, Math.floor(head.length / 2));
      if (!head.subarray(0, n).equals(packed.subarray(0, n))) continue;
    }
    if (zstdReproduces(c, raw, packed, jobs)) return c;
  }
  return undefined;
}
