import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { DecompressStream } from 'zstd-napi';
import { IbuError } from '../errors.js';
import type { ZfsStreamRef } from '../release/types.js';
import { spawnTool, zfsBin } from './tools.js';

/**
 * The begin record of a `zfs send` stream (struct dmu_replay_record, DRR_BEGIN): type u32,
 * payloadlen u32, then drr_begin: magic u64, versioninfo u64, creation_time u64, objset type u32,
 * flags u32, toguid u64, fromguid u64, toname[256]. Written in the sender's byte order; the magic
 * tells which.
 */
export const DMU_BACKUP_MAGIC = 0x2f5bacbacn;
export const BEGIN_RECORD_BYTES = 312;

export interface StreamBegin {
  toGuid: string;
  /** '0' for a full stream. */
  fromGuid: string;
  toName: string;
  creationTime: number;
}

export function parseBegin(buf: Buffer): StreamBegin {
  if (buf.length < BEGIN_RECORD_BYTES)
    throw new IbuError('ZFS_STREAM_TRUNCATED', `The ZFS stream ends after ${buf.length} bytes, before its begin record is complete.`);
  let le = true;
  if (buf.readBigUInt64LE(8) !== DMU_BACKUP_MAGIC) {
    if (buf.readBigUInt64BE(8) !== DMU_BACKUP_MAGIC)
      throw new IbuError('ZFS_STREAM_INVALID', 'This is not a ZFS send stream (no DMU backup magic in the begin record).');
    le = false;
  }
  const u32 = (o: number): number => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const u64 = (o: number): bigint => (le ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o));
  if (u32(0) !== 0) throw new IbuError('ZFS_STREAM_INVALID', 'The ZFS stream does not start with a begin record.');
  const nameEnd = buf.indexOf(0, 56);
  return {
    toGuid: u64(40).toString(),
    fromGuid: u64(48).toString(),
    toName: buf.subarray(56, nameEnd < 0 || nameEnd > 312 ? 312 : nameEnd).toString('utf8'),
    creationTime: Number(u64(24)),
  };
}

/** Hashes what flows through: sha256, byte count and the first bytes (the begin record). */
export class StreamMeter {
  readonly hash = createHash('sha256');
  size = 0;
  private head: Buffer[] = [];
  private headLen = 0;
  update(b: Buffer): void {
    this.hash.update(b);
    this.size += b.length;
    if (this.headLen < BEGIN_RECORD_BYTES) {
      this.head.push(b.subarray(0, BEGIN_RECORD_BYTES - this.headLen));
      this.headLen += Math.min(b.length, BEGIN_RECORD_BYTES - this.headLen);
    }
  }
  begin(): Buffer {
    return Buffer.concat(this.head);
  }
}

/** Writes with backpressure; fails (never hangs) when the reader went away (e.g. zfs recv exited). */
async function writeAll(w: Writable, b: Buffer): Promise<void> {
  if (w.destroyed || w.writableEnded) throw new Error('the receiving process closed its input');
  if (w.write(b)) return;
  await new Promise<void>((resolve, reject) => {
    const done = (): void => {
      w.off('drain', done);
      w.off('close', closed);
      resolve();
    };
    const closed = (): void => {
      w.off('drain', done);
      w.off('close', closed);
      reject(new Error('the receiving process closed its input'));
    };
    w.on('drain', done);
    w.on('close', closed);
  });
}

/**
 * Runs `zfs send -i @from DATASET@to` and feeds its stdout to `sink` (hashing it on the way).
 * `zfs send` of the same snapshot pair is deterministic (checked in the guest test), which is what
 * lets the publisher sign a hash that the server's later, on-demand send must reproduce.
 */
export async function zfsSend(
  dataset: string,
  from: string,
  to: string,
  sink: ((b: Buffer) => Promise<void>) | null,
  signal?: AbortSignal,
): Promise<{ size: number; sha256: string; begin: Buffer }> {
  const { child, done } = spawnTool(zfsBin(), ['send', '-i', `@${from}`, `${dataset}@${to}`], ['ignore', 'pipe', 'pipe'], signal);
  const meter = new StreamMeter();
  let sinkErr: unknown;
  try {
    for await (const chunk of child.stdout as Readable) {
      const b = chunk as Buffer;
      meter.update(b);
      if (sink && !sinkErr) {
        try {
          await sink(b);
        } catch (err) {
          sinkErr = err;
          child.kill('SIGTERM');
        }
      }
    }
  } finally {
    const r = await done;
    if (!sinkErr && r.code !== 0) {
      // eslint-disable-next-line no-unsafe-finally
      throw new IbuError('ZFS_FAILED', `zfs send -i @${from} ${dataset}@${to} failed (exit ${r.code}): ${r.stderr.trim()}`);
    }
  }
  if (sinkErr) throw sinkErr;
  return { size: meter.size, sha256: meter.hash.digest('hex'), begin: meter.begin() };
}

/**
 * The server's on-demand build: `zfs send -i` piped through `zstd -T0` into `out`, with the raw
 * stream's sha256 and size checked against the signed manifest before anyone can be served it.
 */
export async function buildCompressedStream(o: {
  dataset: string;
  from: string;
  to: string;
  expect: ZfsStreamRef;
  out: string;
  level?: number;
  signal?: AbortSignal;
}): Promise<{ size: number; compressedSize: number }> {
  const fh = await fsp.open(o.out, 'w', 0o644);
  const z = spawnTool('zstd', ['-q', `-${o.level ?? 3}`, '-T0', '-c'], ['pipe', fh.fd, 'pipe'], o.signal);
  let sent;
  try {
    z.child.stdin!.on('error', () => {});
    sent = await zfsSend(o.dataset, o.from, o.to, (b) => writeAll(z.child.stdin!, b), o.signal);
    z.child.stdin!.end();
    const zr = await z.done;
    if (zr.code !== 0) throw new IbuError('TOOL_FAILED', `zstd failed compressing the ZFS stream (exit ${zr.code}): ${zr.stderr.trim()}`);
    await fh.sync();
  } catch (err) {
    z.child.kill('SIGTERM');
    throw err;
  } finally {
    await fh.close();
  }
  if (sent.size !== o.expect.size || sent.sha256 !== o.expect.sha256) {
    throw new IbuError(
      'ZFS_STREAM_INVALID',
      `zfs send -i @${o.from} ${o.dataset}@${o.to} produced ${sent.size} bytes with sha256 ${sent.sha256}, ` +
        `but the signed manifest records ${o.expect.size} bytes with sha256 ${o.expect.sha256}: the snapshots changed since publishing (or were replaced). ` +
        `Nothing is served; re-publish or restore the snapshots.`,
    );
  }
  return { size: sent.size, compressedSize: (await fsp.stat(o.out)).size };
}

/** Decompresses a zstd file as a stream of plain buffers (the same decoder for verify and recv). */
export function decompressFile(file: string): Readable {
  const src = createReadStream(file, { highWaterMark: 1 << 20 });
  const d = new DecompressStream();
  src.on('error', (e) => d.destroy(e));
  return src.pipe(d);
}

/**
 * Checks a downloaded, compressed stream against its signed reference before `zfs recv` sees a
 * byte of it: the begin record names the expected base (fromguid) and target (toguid), and the
 * whole plain stream has the signed size and sha256.
 */
export async function verifyStreamFile(file: string, ref: ZfsStreamRef, toGuid: string, to: string): Promise<void> {
  const meter = new StreamMeter();
  let checkedHead = false;
  const checkHead = (): void => {
    checkedHead = true;
    const b = parseBegin(meter.begin());
    if (b.fromGuid !== ref.fromGuid) {
      throw new IbuError(
        'ZFS_WRONG_BASE',
        `The ZFS stream for ${ref.from} -> ${to} is based on snapshot GUID ${b.fromGuid}, but ${ref.from} is GUID ${ref.fromGuid} in the signed manifest: ` +
          `it was made for another base. It was deleted; the next run downloads it again.`,
        {
          details: { streamFromGuid: b.fromGuid, expectedFromGuid: ref.fromGuid },
        },
      );
    }
    if (b.toGuid !== toGuid)
      throw new IbuError('ZFS_STREAM_INVALID', `The ZFS stream produces snapshot GUID ${b.toGuid}, not ${toGuid} (${to}) as the signed manifest says.`);
  };
  try {
    for await (const chunk of decompressFile(file)) {
      meter.update(chunk as Buffer);
      if (!checkedHead && meter.size >= BEGIN_RECORD_BYTES) checkHead();
    }
  } catch (err) {
    if (err instanceof IbuError) throw err;
    // A frame cut short is a truncation; anything else the decoder rejects was altered.
    const msg = (err as Error).message;
    if (/truncat|incomplete|unexpected end|premature/i.test(msg))
      throw new IbuError('ZFS_STREAM_TRUNCATED', `The compressed ZFS stream ${file} ends early (${msg}).`, { cause: err });
    throw new IbuError('ZFS_STREAM_INVALID', `The compressed ZFS stream ${file} cannot be decompressed (${msg}): it was damaged or tampered with.`, {
      cause: err,
    });
  }
  if (!checkedHead) {
    if (meter.size === 0) throw new IbuError('ZFS_STREAM_TRUNCATED', `The ZFS stream ${file} is empty.`);
    checkHead();
  }
  if (meter.size < ref.size)
    throw new IbuError('ZFS_STREAM_TRUNCATED', `The ZFS stream ${ref.from} -> ${to} has ${meter.size} of its ${ref.size} signed bytes: it was cut short.`, {
      details: { size: meter.size, expected: ref.size },
    });
  const sha = meter.hash.digest('hex');
  if (meter.size !== ref.size || sha !== ref.sha256) {
    throw new IbuError(
      'ZFS_STREAM_INVALID',
      `The ZFS stream ${ref.from} -> ${to} does not match the signed manifest ` +
        `(sha256 ${sha}, ${meter.size} bytes; expected ${ref.sha256}, ${ref.size} bytes): it was modified. Nothing was received.`,
      {
        details: { sha256: sha, size: meter.size },
      },
    );
  }
}

/** Copies a readable into a writable with backpressure (used to feed `zfs recv`). */
export async function pump(src: AsyncIterable<unknown>, dst: Writable): Promise<void> {
  for await (const c of src) await writeAll(dst, c as Buffer);
  dst.end();
}
