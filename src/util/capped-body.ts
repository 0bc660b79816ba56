import { IbuError } from '../errors.js';

/**
 * Reads an HTTP response body (fetch's or undici's: both iterate Uint8Array chunks) into its own
 * buffer, refusing it with `tooBig(bytesSoFar)` once it passes `maxBytes`: a hostile or broken
 * peer cannot fill memory with an answer that should be small (issue #15).
 */
export async function readBytesCapped(body: AsyncIterable<Uint8Array> | null | undefined, maxBytes: number, tooBig: (n: number) => Error): Promise<Uint8Array> {
  if (!body) return new Uint8Array(0);
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const part of body) {
    n += part.length;
    if (n > maxBytes) {
      const b = body as { cancel?: () => Promise<void>; destroy?: () => void };
      await b.cancel?.().catch(() => {});
      b.destroy?.();
      throw tooBig(n);
    }
    parts.push(part);
  }
  const out = new Uint8Array(n); // its own ArrayBuffer, never Buffer's shared pool
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** readBytesCapped as UTF-8 text, refused as HTTP_ERROR (protocol and admin answers). */
export async function readTextCapped(body: AsyncIterable<Uint8Array> | null | undefined, maxBytes: number, what: string): Promise<string> {
  const bytes = await readBytesCapped(
    body,
    maxBytes,
    () => new IbuError('HTTP_ERROR', `${what} answered more than ${maxBytes} bytes, far more than this answer can be; refused.`),
  );
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8');
}
