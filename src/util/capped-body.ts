import { IbuError } from '../errors.js';

/**
 * Reads an HTTP response body (fetch's or undici's: both iterate Uint8Array chunks) as text,
 * refusing it once it passes `maxBytes`: a hostile or broken peer cannot fill memory with an
 * answer that should be small (issue #15).
 */
export async function readTextCapped(body: AsyncIterable<Uint8Array> | null | undefined, maxBytes: number, what: string): Promise<string> {
  if (!body) return '';
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const part of body) {
    n += part.length;
    if (n > maxBytes) {
      const b = body as { cancel?: () => Promise<void>; destroy?: () => void };
      await b.cancel?.().catch(() => {});
      b.destroy?.();
      throw new IbuError('HTTP_ERROR', `${what} answered more than ${maxBytes} bytes, far more than this answer can be; refused.`);
    }
    parts.push(part);
  }
  return Buffer.concat(parts, n).toString('utf8');
}
