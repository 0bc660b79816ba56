import { promises as fsp, type Stats } from 'node:fs';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ifRangeMatches, noneMatch, parseRange } from './range.js';

/** Bodies up to this size are read whole and sent as one buffer; larger ones are streamed. */
const SMALL_FILE = 1024 * 1024;

export interface SendFileOptions {
  file: string;
  /** Strong ETag, quoted, e.g. `"<chunk id>"`, or made from the opened file's stat. */
  etag: string | ((st: Stats) => string);
  cacheControl: string;
  contentType: string;
  /** Called once when the body (or the lack of one) is finished with: releases a streaming pin. */
  onDone?: () => void;
  /**
   * The file's size when the caller knows it (a built delta's size is in the database): a HEAD
   * is then answered without opening the file. GET always opens it.
   */
  knownSize?: number;
}

/**
 * Streams a file from disk with ETag, conditional requests and single byte ranges. The file is
 * opened first and the size taken from the open descriptor, so a file renamed or deleted under
 * us is either served whole or reported missing, never torn. Returns false when it does not exist
 * (the caller answers 404) — `onDone` has then already run.
 */
export async function sendFile(req: FastifyRequest, reply: FastifyReply, o: SendFileOptions): Promise<boolean> {
  let done = false;
  const finish = (): void => {
    if (!done) {
      done = true;
      o.onDone?.();
    }
  };
  if (req.method === 'HEAD' && o.knownSize !== undefined && typeof o.etag === 'string') {
    try {
      return head(req, reply, o, o.knownSize, o.etag);
    } finally {
      finish();
    }
  }
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(o.file, 'r');
  } catch (err) {
    finish();
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  let size: number;
  let etag: string;
  try {
    const st = await fh.stat();
    size = st.size;
    etag = typeof o.etag === 'string' ? o.etag : o.etag(st);
  } catch (err) {
    await fh.close();
    finish();
    throw err;
  }
  reply.header('etag', etag);
  reply.header('cache-control', o.cacheControl);
  reply.header('accept-ranges', 'bytes');

  if (noneMatch(req.headers['if-none-match'], etag)) {
    await fh.close();
    finish();
    reply.code(304).send();
    return true;
  }
  const ifRange = req.headers['if-range'] as string | undefined;
  const range = ifRangeMatches(ifRange, etag) ? parseRange(req.headers.range, size) : ({ kind: 'full' } as const);
  if (range.kind === 'unsatisfiable') {
    await fh.close();
    finish();
    reply
      .code(416)
      .header('content-range', `bytes */${size}`)
      .type('application/json')
      .send({ error: { code: 'BAD_REQUEST', message: `The requested range is outside the ${size}-byte file; ask for bytes 0-${Math.max(0, size - 1)}.` } });
    return true;
  }
  let start = 0;
  let end = size - 1;
  if (range.kind === 'partial') {
    ({ start, end } = range);
    reply.code(206).header('content-range', `bytes ${start}-${end}/${size}`);
  } else {
    reply.code(200);
  }
  const length = size === 0 ? 0 : end - start + 1;
  reply.header('content-length', String(length)).type(o.contentType);
  if (req.method === 'HEAD' || length === 0) {
    await fh.close();
    finish();
    reply.send();
    return true;
  }
  if (length <= SMALL_FILE) {
    // Chunks are small: one read into a buffer beats a stream (fewer ticks, one write).
    try {
      const buf = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, start + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got < length) throw new Error(`${o.file} shrank while being read`);
      reply.send(buf);
    } finally {
      await fh.close();
      finish();
    }
    return true;
  }
  const stream = fh.createReadStream({ start, end, autoClose: true, highWaterMark: 256 * 1024 });
  stream.once('close', finish);
  // A client that goes away mid-body must not leave the descriptor (and the eviction pin) behind.
  reply.raw.once('close', () => {
    if (!stream.destroyed) stream.destroy();
  });
  reply.send(stream);
  return true;
}

/** The headers a GET would send, without a body or a file descriptor. */
function head(req: FastifyRequest, reply: FastifyReply, o: SendFileOptions, size: number, etag: string): boolean {
  reply.header('etag', etag).header('cache-control', o.cacheControl).header('accept-ranges', 'bytes');
  if (noneMatch(req.headers['if-none-match'], etag)) {
    reply.code(304).send();
    return true;
  }
  const range = ifRangeMatches(req.headers['if-range'] as string | undefined, etag) ? parseRange(req.headers.range, size) : ({ kind: 'full' } as const);
  if (range.kind === 'unsatisfiable') {
    reply.code(416).header('content-range', `bytes */${size}`).send();
    return true;
  }
  let length = size;
  if (range.kind === 'partial') {
    reply.code(206).header('content-range', `bytes ${range.start}-${range.end}/${size}`);
    length = range.end - range.start + 1;
  } else {
    reply.code(200);
  }
  reply.header('content-length', String(length)).type(o.contentType).send();
  return true;
}

export interface SendBytesOptions {
  data: Uint8Array;
  /** Strong ETag, quoted. */
  etag: string;
  cacheControl: string;
  contentType: string;
}

/**
 * The same answers as sendFile (ETag, 304, single ranges, 416, HEAD) for bytes already in memory:
 * what the server read from an object store. Release files and chunks are small enough to hold.
 */
export function sendBytes(req: FastifyRequest, reply: FastifyReply, o: SendBytesOptions): void {
  const size = o.data.length;
  if (req.method === 'HEAD') {
    head(req, reply, { ...o, file: '' }, size, o.etag);
    return;
  }
  reply.header('etag', o.etag).header('cache-control', o.cacheControl).header('accept-ranges', 'bytes');
  if (noneMatch(req.headers['if-none-match'], o.etag)) {
    reply.code(304).send();
    return;
  }
  const range = ifRangeMatches(req.headers['if-range'] as string | undefined, o.etag) ? parseRange(req.headers.range, size) : ({ kind: 'full' } as const);
  if (range.kind === 'unsatisfiable') {
    reply
      .code(416)
      .header('content-range', `bytes */${size}`)
      .type('application/json')
      .send({ error: { code: 'BAD_REQUEST', message: `The requested range is outside the ${size}-byte file; ask for bytes 0-${Math.max(0, size - 1)}.` } });
    return;
  }
  let body = Buffer.from(o.data.buffer, o.data.byteOffset, o.data.byteLength);
  if (range.kind === 'partial') {
    reply.code(206).header('content-range', `bytes ${range.start}-${range.end}/${size}`);
    body = body.subarray(range.start, range.end + 1);
  } else {
    reply.code(200);
  }
  reply.header('content-length', String(body.length)).type(o.contentType).send(body);
}
