import type { FastifyReply, FastifyRequest } from 'fastify';
import { isIbuError } from '../errors.js';
import { sendBytes, sendFile } from './send-file.js';
import type { StoreLayout } from './store-layout.js';

export interface ReleaseFileAnswer {
  /** Store path, e.g. `chunks/ab12/<id>.zst` or `releases/<v>/manifest.json`. */
  rel: string;
  /** Local file path of the same thing (when the release side is the data directory). */
  file: string;
  /** Fixed ETag (chunks: the id); otherwise the store's validator for the file. */
  etag?: string;
  cacheControl: string;
  contentType: string;
}

/**
 * Answers a GET/HEAD for a release file or chunk from wherever the release side lives. From the
 * data directory the file is streamed from disk (sendFile). From S3 the server reads the object
 * and answers itself (the same ETag/Range/304 rules), rather than redirecting to the bucket:
 * devices keep one origin and one set of credentials, and a CDN in front (nginx, docs/server.md)
 * caches the answers, so the bucket sees each chunk about once per CDN node. Returns false when
 * the file does not exist (the caller answers 404).
 */
export async function sendReleaseFile(req: FastifyRequest, reply: FastifyReply, layout: StoreLayout, o: ReleaseFileAnswer): Promise<boolean> {
  if (layout.releasesLocal) {
    return sendFile(req, reply, {
      file: o.file,
      etag: o.etag ?? ((st) => `"m-${st.ino.toString(36)}-${st.size.toString(36)}-${Math.floor(st.mtimeMs).toString(36)}"`),
      cacheControl: o.cacheControl,
      contentType: o.contentType,
    });
  }
  let data: Uint8Array;
  let etag = o.etag;
  try {
    const store = layout.releases as typeof layout.releases & { readFile?: (rel: string) => Promise<{ data: Uint8Array; etag: string }> };
    if (store.readFile) {
      const r = await store.readFile(o.rel);
      data = r.data;
      etag ??= `"m-${r.etag.replace(/"/g, '')}"`;
    } else {
      data = await store.getFile(o.rel);
    }
  } catch (err) {
    if (isIbuError(err, 'NOT_FOUND') || isIbuError(err, 'CHUNK_MISSING')) return false;
    throw err;
  }
  sendBytes(req, reply, { data, etag: etag ?? `"m-${data.length.toString(36)}"`, cacheControl: o.cacheControl, contentType: o.contentType });
  return true;
}
