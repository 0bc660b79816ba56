import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import fc from 'fast-check';
import { compress } from 'zstd-napi';
import { decompressCapped, zstdBinding } from '../../src/chunk/compress.js';
import {
  FIXED_HEADER_BYTES,
  FORMAT_VERSION,
  TRAILER_BYTES,
  decodeFixedHeader,
  decodeOpTable,
  encodeFixedHeader,
  encodeOpTable,
  trailer,
} from '../../src/delta/frame-codec.js';
import { applyDelta, readDelta } from '../../src/delta/index.js';
import { IbuError } from '../../src/errors.js';

/**
 * Mutants of a real delta for the delta fuzz tests (fuzz.test.ts, and a child process that
 * measures peak RSS): raw edits of the file, and edits of its sections that are then sealed
 * again (header checksum, offsets, trailer sha256 recomputed), so they reach the op table
 * decoder, the validator and apply instead of stopping at a checksum.
 */

export interface DeltaParts {
  json: Buffer;
  /** The op table, decompressed. */
  table: Buffer;
  payload: Buffer;
}

export function splitDelta(file: Buffer): DeltaParts {
  const f = decodeFixedHeader(file.subarray(0, FIXED_HEADER_BYTES), 'fuzz', file.length);
  const tableZ = file.subarray(f.opTableOffset, f.opTableOffset + f.opTableLength);
  return {
    json: file.subarray(FIXED_HEADER_BYTES, FIXED_HEADER_BYTES + f.jsonLength),
    table: decompressCapped(new zstdBinding.DCtx(), tableZ, 64 << 20),
    payload: file.subarray(f.payloadOffset, f.payloadOffset + f.payloadLength),
  };
}

/** A well-formed frame around the given sections: every checksum and offset right. */
export function sealDelta(p: DeltaParts): Buffer {
  const tableZ = compress(p.table, { compressionLevel: 1 });
  const opTableOffset = FIXED_HEADER_BYTES + p.json.length;
  const payloadOffset = opTableOffset + tableZ.length;
  const totalLength = payloadOffset + p.payload.length + TRAILER_BYTES;
  // The fixed header's version follows the JSON's format (1, or 2 with RECOMPRESS ops), as the writer does.
  let version = FORMAT_VERSION;
  try {
    const f = (JSON.parse(p.json.toString('utf8')) as { format?: unknown }).format;
    if (f === 1 || f === 2) version = f;
  } catch {
    // a damaged header: the reader stops at it whatever the version
  }
  const fixed = encodeFixedHeader(
    {
      version,
      flags: 0,
      jsonLength: p.json.length,
      totalLength,
      opTableOffset,
      opTableLength: tableZ.length,
      payloadOffset,
      payloadLength: p.payload.length,
    },
    p.json,
  );
  const body = Buffer.concat([fixed, p.json, tableZ, p.payload]);
  return Buffer.concat([body, trailer(createHash('sha256').update(body).digest())]);
}

/** Numbers that sit on the edges the reader checks: sizes, limits, 2^32, 2^53. */
const INTERESTING = [
  0,
  1,
  2,
  4,
  15,
  16,
  0x7f,
  0xff,
  0xffff,
  0x10000,
  4096,
  1 << 20,
  1 << 27,
  (1 << 27) + 4,
  2 ** 31,
  2 ** 32 - 1,
  2 ** 32,
  2 ** 53 - 1,
  2 ** 53,
];

const HEADER_PATHS = [
  ['format'],
  ['fromVersion'],
  ['toVersion'],
  ['source'],
  ['source', 'size'],
  ['source', 'sha256'],
  ['source', 'blockSize'],
  ['target'],
  ['target', 'size'],
  ['target', 'sha256'],
  ['opHash'],
  ['opCount'],
  ['segmentCount'],
  ['encoders'],
  ['encoders', 'xz'],
  ['encoders', 'gzip'],
];

export type Edit =
  | { in: 'table' | 'payload' | 'json-bytes'; kind: 'byte'; at: number; v: number }
  | { in: 'table'; kind: 'u32' | 'u64'; at: number; v: number }
  | { in: 'table' | 'payload'; kind: 'cut'; at: number; v: number }
  | { in: 'table'; kind: 'splice'; at: number; v: number }
  | { in: 'json'; path: string[]; value: unknown }
  /** On the decoded table: one number of one op or segment changed, or ops reordered, dropped or repeated; counts kept in step. */
  | { in: 'ops'; kind: 'field' | 'nudge' | 'swap' | 'drop' | 'repeat'; at: number; field: number; v: number };

const jsonValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(...INTERESTING, -1, 0.5, 1e308, '0'.repeat(64), 'f'.repeat(64), ''),
);

export const editArb: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ in: fc.constantFrom('table' as const), kind: fc.constant('byte' as const), at: fc.nat(), v: fc.nat({ max: 255 }) }) },
  {
    weight: 4,
    arbitrary: fc.record({
      in: fc.constant('table' as const),
      kind: fc.constantFrom('u32' as const, 'u64' as const),
      at: fc.nat(),
      v: fc.constantFrom(...INTERESTING),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ in: fc.constantFrom('table' as const, 'payload' as const), kind: fc.constant('cut' as const), at: fc.nat(), v: fc.nat() }),
  },
  { weight: 1, arbitrary: fc.record({ in: fc.constant('table' as const), kind: fc.constant('splice' as const), at: fc.nat(), v: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ in: fc.constant('payload' as const), kind: fc.constant('byte' as const), at: fc.nat(), v: fc.nat({ max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ in: fc.constant('json-bytes' as const), kind: fc.constant('byte' as const), at: fc.nat(), v: fc.nat({ max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ in: fc.constant('json' as const), path: fc.constantFrom(...HEADER_PATHS), value: jsonValue }) },
  {
    weight: 4,
    arbitrary: fc.record({
      in: fc.constant('ops' as const),
      kind: fc.constantFrom('field' as const, 'nudge' as const, 'swap' as const, 'drop' as const, 'repeat' as const),
      at: fc.nat(),
      field: fc.nat(),
      v: fc.oneof(fc.constantFrom(...INTERESTING), fc.integer({ min: -4096, max: 4096 })),
    }),
  },
);

/** The numbers of an op or segment as [object, key] pairs, ranges included: what an 'ops' edit can change. */
function numberSlots(x: object): Array<[Record<string, number>, string]> {
  const out: Array<[Record<string, number>, string]> = [];
  for (const [k, v] of Object.entries(x)) {
    if (typeof v === 'number') out.push([x as Record<string, number>, k]);
    else if (Array.isArray(v)) for (const r of v) out.push(...numberSlots(r as object));
    else if (v && typeof v === 'object' && !Buffer.isBuffer(v)) out.push(...numberSlots(v as object)); // a RECOMPRESS op's encoder settings
  }
  return out;
}

/** Applies an 'ops' edit to the decoded table and re-encodes it; the header's counts follow. */
function editOps(p: DeltaParts, e: Extract<Edit, { in: 'ops' }>): void {
  let t: ReturnType<typeof decodeOpTable>;
  let h: Record<string, unknown>;
  try {
    t = decodeOpTable(p.table, 'fuzz');
    h = JSON.parse(p.json.toString('utf8')) as Record<string, unknown>;
  } catch {
    return; // an earlier edit broke the table or the header: nothing to decode
  }
  const items: object[] = [...t.ops, ...t.segments];
  if (items.length === 0 || !h || typeof h !== 'object') return;
  const i = e.at % t.ops.length || 0;
  if (e.kind === 'field' || e.kind === 'nudge') {
    const slots = numberSlots(items[e.at % items.length]!);
    if (slots.length === 0) return;
    const [obj, key] = slots[e.field % slots.length]!;
    // Never negative or past 2^53: the writer cannot encode those (the reader would never see them).
    const v = e.kind === 'field' ? e.v : obj[key]! + e.v;
    obj[key] = Math.min(Math.max(0, v), 2 ** 53 - 1);
  } else if (e.kind === 'swap') {
    const j = e.field % t.ops.length;
    [t.ops[i], t.ops[j]] = [t.ops[j]!, t.ops[i]!];
  } else if (e.kind === 'drop') {
    t.ops.splice(i, 1);
  } else {
    t.ops.splice(i, 0, structuredClone(t.ops[i]!));
  }
  // Segment and op indexes in u32 fields are written with writeUInt32LE: keep them in range.
  for (const op of t.ops) if ('segment' in op) op.segment = Math.min(op.segment, 2 ** 32 - 1);
  // A RECOMPRESS op's settings are u8 and u32 fields.
  for (const op of t.ops) {
    if (op.type !== 'recompress') continue;
    const q = op.params;
    [q.level, q.check, q.threads] = [q.level, q.check, q.threads].map((x) => Math.min(x, 255)) as [number, number, number];
    q.dict = Math.min(q.dict, 2 ** 32 - 1);
  }
  h.opCount = t.ops.length;
  h.segmentCount = t.segments.length;
  p.table = encodeOpTable(t.ops, t.segments);
  p.json = Buffer.from(JSON.stringify(h));
}

function setPath(obj: Record<string, unknown>, p: string[], value: unknown): void {
  let at = obj;
  for (const k of p.slice(0, -1)) {
    if (!at[k] || typeof at[k] !== 'object') return;
    at = at[k] as Record<string, unknown>;
  }
  at[p[p.length - 1]!] = value;
}

/** The sections after the edits; the caller seals them (or not). */
export function editParts(orig: DeltaParts, edits: Edit[]): DeltaParts {
  const p = { json: Buffer.from(orig.json), table: Buffer.from(orig.table), payload: Buffer.from(orig.payload) };
  for (const e of edits) {
    if (e.in === 'ops') {
      editOps(p, e);
      continue;
    }
    if (e.in === 'json') {
      let h: Record<string, unknown>;
      try {
        h = JSON.parse(p.json.toString('utf8')) as Record<string, unknown>;
      } catch {
        continue; // an earlier byte edit broke the JSON: nothing to set a field in
      }
      if (!h || typeof h !== 'object') continue;
      setPath(h, e.path, e.value);
      p.json = Buffer.from(JSON.stringify(h));
      continue;
    }
    const key = e.in === 'json-bytes' ? 'json' : e.in;
    const b = p[key];
    const at = b.length === 0 ? 0 : e.at % b.length;
    if (e.kind === 'byte') {
      if (b.length > 0) b[at] = e.v;
    } else if (e.kind === 'u32') {
      if (at + 4 <= b.length) b.writeUInt32LE(e.v % 2 ** 32, at);
    } else if (e.kind === 'u64') {
      if (at + 8 <= b.length) b.writeBigUInt64LE(BigInt(e.v), at);
    } else if (e.kind === 'cut') {
      p[key] = b.subarray(0, at);
    } else {
      // Drop or repeat a run: records shift against the counts.
      const to = b.length === 0 ? 0 : e.v % b.length;
      p[key] = Buffer.concat([b.subarray(0, at), b.subarray(to)]);
    }
  }
  return p;
}

/** Codes a damaged or hostile delta may give; anything else (or no IbuError) is a bug. */
export const DELTA_CODES = new Set([
  // A header naming another xz/gzip version than the one installed: refused before any output.
  'TOOL_MISSING',
  'DELTA_INVALID',
  'DELTA_TRUNCATED',
  'DELTA_WRONG_SOURCE',
  'DELTA_SOURCE_MODIFIED',
  'DELTA_WRONG_PAIR',
  'IMAGE_HASH_MISMATCH',
]);

export function codeOf(err: unknown): string {
  if (err instanceof IbuError && DELTA_CODES.has(err.code) && err.message.length > 0) return err.code;
  throw err;
}

export function readOutcome(file: string): string {
  try {
    readDelta(file);
    return 'ok';
  } catch (err) {
    return codeOf(err);
  }
}

/**
 * Applies `delta` to `source` into `out` (which holds a sentinel): 'ok' only when the output is
 * the target bit for bit; otherwise the code, and `out` must be untouched with no .partial left.
 */
export async function applyOutcome(source: string, delta: string, out: string, targetSha256: string): Promise<string> {
  const sentinel = 'not replaced\n';
  fs.writeFileSync(out, sentinel);
  try {
    await applyDelta({ sourceImage: source, delta, out });
  } catch (err) {
    const code = codeOf(err);
    if (fs.readFileSync(out, 'utf8') !== sentinel) throw new Error(`${code}: the output was replaced`);
    if (fs.existsSync(`${out}.partial`)) throw new Error(`${code}: a .partial was left`);
    return code;
  }
  const sha = createHash('sha256').update(fs.readFileSync(out)).digest('hex');
  if (sha !== targetSha256) throw new Error(`apply succeeded with a wrong output (sha256 ${sha})`);
  return 'ok';
}

/**
 * `count` sealed mutants from a fixed seed, each read and, when it reads, applied: the tally of
 * outcomes. Run in a child process to measure peak RSS over all of them.
 */
export async function mutantBatch(o: {
  delta: string;
  source: string;
  work: string;
  targetSha256: string;
  count: number;
  seed: number;
}): Promise<Record<string, number>> {
  const parts = splitDelta(fs.readFileSync(o.delta));
  const tally: Record<string, number> = {};
  const file = `${o.work}/batch.ibudelta`;
  for (const edits of fc.sample(fc.array(editArb, { minLength: 1, maxLength: 4 }), { numRuns: o.count, seed: o.seed })) {
    fs.writeFileSync(file, sealDelta(editParts(parts, edits)));
    let r = readOutcome(file);
    if (r === 'ok') r = `applied:${await applyOutcome(o.source, file, `${o.work}/batch-out.img`, o.targetSha256)}`;
    tally[r] = (tally[r] ?? 0) + 1;
  }
  return tally;
}
