import { FIXED_HEADER_BYTES, TRAILER_BYTES } from './frame-codec.js';
import { opTargetBytes } from './op-ranges.js';
import type { DeltaFile, DeltaHeader, DeltaOp, OpType } from './types.js';

/**
 * Where a delta's bytes go, for `ibu delta info`: pure, over a delta already read and
 * validated. Payload bytes exist only for PATCH and REPLACE ops, and a segment is one zstd
 * frame shared by several ops, so an op's payload share is estimated: its segment's compressed
 * bytes split in proportion to the target bytes each op writes (the shares add up to the
 * payload exactly). An op's `path` names the file it belongs to: '' is filesystem metadata no
 * file owns (inode tables, bitmaps, the journal, extent blocks), a path ending in '/' is a
 * directory's blocks (deltas made before directories were marked show them as files).
 */

export interface ByteTally {
  ops: number;
  /** Target bytes the ops write. */
  targetBytes: number;
  /** Compressed payload bytes (estimated per op, exact in total). */
  payloadBytes: number;
}

export interface FileTally extends ByteTally {
  path: string;
  type: 'patch' | 'replace' | 'recompress';
  /** The source file a PATCH was diffed against. */
  srcPath?: string;
}

export interface DeltaInfo extends DeltaHeader {
  /** The whole file, and its sections. */
  bytes: number;
  sections: { fixedHeader: number; headerJson: number; opTable: number; payload: number; trailer: number };
  byKind: Record<OpType, ByteTally>;
  /** Payload by top-level directory of the target ('/' for files in the root), most bytes first. */
  byDirectory: Array<{ directory: string } & ByteTally>;
  /** PATCH/REPLACE ops on blocks no regular file owns, against those on file contents. */
  metadata: ByteTally;
  fileData: ByteTally;
  /** The files that cost the most payload, most first. */
  largestFiles: FileTally[];
}

const LARGEST = 10;

function tally(): ByteTally {
  return { ops: 0, targetBytes: 0, payloadBytes: 0 };
}

function add(t: ByteTally, target: number, payload: number): void {
  t.ops++;
  t.targetBytes += target;
  t.payloadBytes += payload;
}

/** True for blocks of filesystem metadata or of a directory. */
export function isMetadataPath(path: string): boolean {
  return path === '' || path.endsWith('/');
}

/** '/usr' for '/usr/bin/app', '/' for '/vmlinuz'. */
export function topLevelDirectory(path: string): string {
  const parts = path.split('/').filter((p) => p !== '');
  return parts.length > 1 ? `/${parts[0]}` : '/';
}

/** Each op's share of the payload: its segment's compressed bytes split by target bytes, rounding so the shares add up. */
export function payloadShares(d: Pick<DeltaFile, 'ops' | 'segments'>): number[] {
  const shares = new Array<number>(d.ops.length).fill(0);
  const done = new Array<number>(d.segments.length).fill(0);
  d.ops.forEach((op, i) => {
    if (op.type !== 'patch' && op.type !== 'replace' && op.type !== 'recompress') return;
    const seg = d.segments[op.segment]!;
    const before = done[op.segment]!;
    // A RECOMPRESS op's share of its segment is its uncompressed content.
    const after = before + (op.type === 'recompress' ? op.rawLength : opTargetBytes(op));
    done[op.segment] = after;
    shares[i] = Math.round((seg.compressedLength * after) / seg.outputLength) - Math.round((seg.compressedLength * before) / seg.outputLength);
  });
  return shares;
}

export function describeDelta(d: DeltaFile): DeltaInfo {
  const byKind: Record<OpType, ByteTally> = { zero: tally(), copy: tally(), patch: tally(), replace: tally(), recompress: tally() };
  const dirs = new Map<string, ByteTally>();
  const files = new Map<string, FileTally>();
  const metadata = tally();
  const fileData = tally();
  const shares = payloadShares(d);
  d.ops.forEach((op: DeltaOp, i) => {
    const target = opTargetBytes(op);
    const payload = shares[i]!;
    add(byKind[op.type], target, payload);
    if (op.type !== 'patch' && op.type !== 'replace' && op.type !== 'recompress') return;
    if (isMetadataPath(op.path)) {
      add(metadata, target, payload);
      return;
    }
    add(fileData, target, payload);
    const dir = topLevelDirectory(op.path);
    if (!dirs.has(dir)) dirs.set(dir, tally());
    add(dirs.get(dir)!, target, payload);
    let f = files.get(op.path);
    if (!f) {
      f = { path: op.path, type: op.type, ...(op.type !== 'replace' ? { srcPath: op.srcPath } : {}), ...tally() };
      files.set(op.path, f);
    }
    add(f, target, payload);
  });
  const byPayload = (a: ByteTally, b: ByteTally): number => b.payloadBytes - a.payloadBytes || b.targetBytes - a.targetBytes;
  return {
    ...d.header,
    bytes: d.totalLength,
    sections: {
      fixedHeader: FIXED_HEADER_BYTES,
      headerJson: d.payloadOffset - d.opTableLength - FIXED_HEADER_BYTES,
      opTable: d.opTableLength,
      payload: d.payloadLength,
      trailer: TRAILER_BYTES,
    },
    byKind,
    byDirectory: [...dirs].map(([directory, t]) => ({ directory, ...t })).sort(byPayload),
    metadata,
    fileData,
    largestFiles: [...files.values()].sort(byPayload).slice(0, LARGEST),
  };
}
