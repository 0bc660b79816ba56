/**
 * HTTP byte ranges (RFC 9110 §14): parsing one `Range: bytes=...` header against a file size.
 * Only single ranges are honoured; a multi-range request is answered with the whole file, which
 * the RFC allows and which every resuming downloader handles.
 */
export type RangeResult =
  | { kind: 'full' } // no Range (or one we ignore): 200 with the whole body
  | { kind: 'partial'; start: number; end: number } // inclusive end: 206
  | { kind: 'unsatisfiable' }; // 416 with Content-Range: bytes */size

const SINGLE = /^bytes=(\d*)-(\d*)$/;

export function parseRange(header: string | undefined, size: number): RangeResult {
  if (header === undefined) return { kind: 'full' };
  const h = header.trim();
  if (!h.toLowerCase().startsWith('bytes=')) return { kind: 'full' }; // unknown unit: ignore
  if (h.includes(',')) return { kind: 'full' };
  const m = SINGLE.exec(h.replace(/^bytes=\s*/i, 'bytes=').replace(/\s+/g, ''));
  if (!m) return { kind: 'full' }; // syntactically invalid Range is ignored (RFC 9110 §14.2)
  const [, a, b] = m;
  if (a === '' && b === '') return { kind: 'full' };
  if (a === '') {
    // suffix range: the last N bytes
    const n = Number(b);
    if (n === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'partial', start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  let end = b === '' ? size - 1 : Number(b);
  if (b !== '' && end < start) return { kind: 'full' }; // invalid: ignore
  if (start >= size) return { kind: 'unsatisfiable' };
  if (end >= size) end = size - 1;
  return { kind: 'partial', start, end };
}

/**
 * `If-Range` (RFC 9110 §13.1.5): the range applies only if the validator still matches;
 * otherwise the client gets the whole new representation. We only issue strong ETags, and a
 * date validator is never strong enough for our files, so only an exact ETag match counts.
 */
export function ifRangeMatches(ifRange: string | undefined, etag: string): boolean {
  if (ifRange === undefined) return true;
  return ifRange.trim() === etag;
}

/** `If-None-Match` with a list of (weak or strong) tags or `*`; weak comparison per RFC 9110 §13.1.2. */
export function noneMatch(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  const bare = etag.replace(/^W\//, '');
  return header.split(',').some((t) => {
    const x = t.trim();
    return x === '*' || x.replace(/^W\//, '') === bare;
  });
}
