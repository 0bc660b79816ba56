import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { IbuError } from '../errors.js';
import { pwriteFull } from '../util/full-io.js';
import { deltaInvalid, deltaTruncated } from './delta-errors.js';
import {
  FIXED_HEADER_BYTES,
  TRAILER_BYTES,
  checkFixedHeader,
  decodeFixedHeader,
  decodeHeaderJson,
  decodeOpTable,
  decodeTrailer,
  decompressOpTable,
  trailer,
  type EncodedLayout,
  type FixedHeader,
} from './frame-codec.js';
import { validateCounts, validateHeader, validateOps } from './validate.js';
import type { DeltaFile, DeltaHeader } from './types.js';

/**
 * A delta on disk: open, read the sections the frame codec decodes, hash the body in a stream,
 * and write a new delta from its head and payload files.
 */

const HASH_BYTES = 4 << 20;

/** Up to `len` bytes at `pos`: fewer when the file ends first (the caller decides what that means). */
function readUpTo(fd: number, len: number, pos: number): Buffer {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, buf, done, len - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return buf.subarray(0, done);
}

function openDelta(path: string): number {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new IbuError('NOT_FOUND', `The delta ${path} does not exist; check the path.`, { cause: err });
    throw new IbuError('IO_ERROR', `Cannot open the delta ${path}: ${e.message}.`, { cause: err });
  }
  // A directory opens fine and fails only at the first read (EISDIR): say so up front.
  if (!fs.fstatSync(fd).isFile()) {
    fs.closeSync(fd);
    throw new IbuError('USAGE', `The delta ${path} is a directory or special file, not a delta file; pass the .ibudelta file itself.`);
  }
  return fd;
}

function readHead(fd: number, file: string, size: number): { fixed: FixedHeader; header: DeltaHeader } {
  const head = readUpTo(fd, FIXED_HEADER_BYTES, 0);
  const fixed = decodeFixedHeader(head, file, size);
  const json = readUpTo(fd, fixed.jsonLength, FIXED_HEADER_BYTES);
  if (json.length < fixed.jsonLength) {
    // A header that cannot be read whole: a short file, unless the length field itself is damaged.
    if (size < fixed.totalLength) throw deltaTruncated(file, size, fixed.totalLength);
    throw deltaInvalid(file, 'the header is longer than the file');
  }
  checkFixedHeader(head, fixed, json, file);
  const header = decodeHeaderJson(json, file);
  validateHeader(header, file);
  if (header.format !== fixed.version) throw deltaInvalid(file, `the header says format ${header.format}, the fixed header ${fixed.version}`);
  if (size < fixed.totalLength) throw deltaTruncated(file, size, fixed.totalLength);
  if (size > fixed.totalLength) throw deltaInvalid(file, `it has ${size - fixed.totalLength} bytes after its end`);
  return { fixed, header };
}

/**
 * Reads and checks the header only: magic, format version, header checksum, length. Cheap (a
 * few KiB read), so a server or agent can show what a delta is for before applying it.
 * DELTA_TRUNCATED when the file is shorter than its header says; DELTA_INVALID otherwise.
 */
export function readDeltaHeader(path: string): DeltaHeader {
  const fd = openDelta(path);
  try {
    return readHead(fd, path, fs.fstatSync(fd).size).header;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads a whole delta's index: checks the sha256 in the trailer over every byte (the payload
 * is small next to the images, so this costs little), then decodes and validates the op table.
 */
export function readDelta(path: string, onProgress?: (done: number, total: number) => void): DeltaFile {
  const fd = openDelta(path);
  try {
    const size = fs.fstatSync(fd).size;
    const { fixed, header } = readHead(fd, path, size);
    const bodyEnd = fixed.totalLength - TRAILER_BYTES;
    const want = decodeTrailer(readUpTo(fd, TRAILER_BYTES, bodyEnd), path);
    const h = createHash('sha256');
    const buf = Buffer.alloc(Math.min(HASH_BYTES, Math.max(1, bodyEnd)));
    for (let pos = 0; pos < bodyEnd;) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, bodyEnd - pos), pos);
      if (n === 0) throw deltaTruncated(path, pos, fixed.totalLength);
      h.update(buf.subarray(0, n));
      pos += n;
      onProgress?.(pos, bodyEnd);
    }
    if (!h.digest().equals(want)) throw deltaInvalid(path, 'its sha256 does not match the one in its trailer');
    const raw = decompressOpTable(readUpTo(fd, fixed.opTableLength, fixed.opTableOffset), path);
    const { ops, segments } = decodeOpTable(raw, path);
    validateCounts(header, ops, segments, path);
    validateOps(header, ops, segments, fixed.payloadLength, path);
    const { opTableLength, payloadOffset, payloadLength, totalLength } = fixed;
    return { header, ops, segments, opTableLength, payloadOffset, payloadLength, totalLength };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes a delta to `path` (the caller's `.partial`): the encoded head, then each payload file
 * in order, streamed through `buf`, then the trailer with the sha256 of all of it; fsync.
 */
export function writeDeltaFile(path: string, layout: EncodedLayout, payloadFiles: string[], buf: Buffer): void {
  const sha = createHash('sha256');
  const ofd = fs.openSync(path, 'w', 0o644);
  try {
    let at = 0;
    const write = (b: Buffer): void => {
      sha.update(b);
      pwriteFull(ofd, b, at);
      at += b.length;
    };
    write(layout.head);
    for (const file of payloadFiles) {
      const pfd = fs.openSync(file, 'r');
      try {
        for (let pos = 0; ;) {
          const n = fs.readSync(pfd, buf, 0, buf.length, pos);
          if (n === 0) break;
          write(buf.subarray(0, n));
          pos += n;
        }
      } finally {
        fs.closeSync(pfd);
      }
    }
    pwriteFull(ofd, trailer(sha.digest()), at);
    fs.fsyncSync(ofd);
  } finally {
    fs.closeSync(ofd);
  }
}
