import { Agent, request, type Dispatcher } from 'undici';
import { MAX_CHUNK_BYTES, zstdBinding } from '../chunk/compress.js';
import { IbuError } from '../errors.js';
import { assertChunkId, assertRelPath, chunkPath } from './layout.js';
import type { ChunkId, SizedStore, Store } from './store.js';
import { readBytesCapped } from '../util/capped-body.js';

export type HttpLayout = 'static' | 'api';

export interface HttpStoreOptions {
  /**
   * 'static' (default): the store directory served as files (any web server or CDN):
   * `<base>/chunks/ab12/<id>.zst`, `<base>/releases/<v>/manifest.json`.
   * 'api': `ibu serve` routes: `<base>/v1/chunks/<id>`, `<base>/v1/releases/<v>/manifest`.
   * A base URL ending in `/v1` selects 'api' when no layout is given.
   */
  layout?: HttpLayout;
  /** Parallel connections to the origin. */
  connections?: number;
  /** Attempts per request for transient failures (network errors, 408, 429, 5xx). */
  attempts?: number;
  /** First backoff delay in ms; doubled per attempt with full jitter, capped at 10 s. */
  backoffMs?: number;
  /** Per-request timeout in ms (headers and body). */
  timeoutMs?: number;
  headers?: Record<string, string>;
}

const TRANSIENT = new Set([408, 425, 429, 500, 502, 503, 504]);

/** A read-only store over HTTP(S), with bounded connections and retries with backoff. */
export class HttpStore implements Store, SizedStore {
  readonly location: string;
  readonly layout: HttpLayout;
  private readonly base: string;
  private readonly agent: Agent;
  private readonly attempts: number;
  private readonly backoffMs: number;
  private readonly headers: Record<string, string>;
  /** Retries performed so far (reported by fetch). */
  retries = 0;

  constructor(baseUrl: string, opts: HttpStoreOptions = {}) {
    let u: URL;
    try {
      u = new URL(baseUrl);
    } catch {
      throw new IbuError('USAGE', `'${baseUrl}' is not a URL; give http(s)://host[:port]/path/to/store`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new IbuError('USAGE', `unsupported URL scheme in '${baseUrl}': use http or https`);
    let base = u.toString().replace(/\/+$/, '');
    let layout = opts.layout;
    if (layout === undefined && base.endsWith('/v1')) layout = 'api';
    if (layout === 'api' && base.endsWith('/v1')) base = base.slice(0, -3);
    this.layout = layout ?? 'static';
    this.base = base;
    this.location = base;
    this.attempts = Math.max(1, opts.attempts ?? 5);
    this.backoffMs = opts.backoffMs ?? 250;
    this.headers = opts.headers ?? {};
    const timeout = opts.timeoutMs ?? 60_000;
    this.agent = new Agent({ connections: opts.connections ?? 8, headersTimeout: timeout, bodyTimeout: timeout, keepAliveTimeout: 30_000 });
  }

  chunkUrl(id: ChunkId): string {
    assertChunkId(id);
    return this.layout === 'api' ? `${this.base}/v1/chunks/${id}` : `${this.base}/${chunkPath(id)}`;
  }

  fileUrl(relPath: string): string {
    assertRelPath(relPath);
    if (this.layout === 'api') {
      const m = /^releases\/([^/]+)\/manifest\.json$/.exec(relPath);
      if (m) return `${this.base}/v1/releases/${encodeURIComponent(m[1]!)}/manifest`;
      const c = /^channels\/([^/]+)\.json$/.exec(relPath);
      if (c) return `${this.base}/v1/channels/${encodeURIComponent(c[1]!)}/releases`;
      return `${this.base}/v1/files/${relPath}`;
    }
    return `${this.base}/${relPath}`;
  }

  async getChunk(id: ChunkId, signal?: AbortSignal, maxBytes = MAX_STORED_CHUNK_BYTES): Promise<Uint8Array> {
    const body = await this.get(
      this.chunkUrl(id),
      signal,
      () => new IbuError('CHUNK_MISSING', `chunk ${id} is missing from ${this.base} (HTTP 404); re-publish the release or check the store URL`),
      { maxBytes, code: 'CHUNK_INVALID' },
    );
    return body;
  }

  async hasChunk(id: ChunkId, signal?: AbortSignal): Promise<boolean> {
    return (await this.chunkSize(id, signal)) !== undefined;
  }

  async chunkSize(id: ChunkId, signal?: AbortSignal): Promise<number | undefined> {
    const res = await this.send(this.chunkUrl(id), 'HEAD', signal);
    if (res === 404) return undefined;
    return res;
  }

  async getFile(relPath: string, signal?: AbortSignal): Promise<Uint8Array> {
    const notFound = () => new IbuError('NOT_FOUND', `${relPath} does not exist at ${this.base} (HTTP 404)`);
    return this.get(this.fileUrl(relPath), signal, notFound, { maxBytes: MAX_FILE_BYTES, code: 'MANIFEST_INVALID' });
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  private async get(url: string, signal: AbortSignal | undefined, notFound: () => IbuError, cap: BodyCap): Promise<Uint8Array> {
    const r = await this.send(url, 'GET', signal, cap);
    if (typeof r === 'number') throw notFound();
    return r;
  }

  /** GET → body bytes, HEAD → content length; 404 → the number 404 for both. */
  private async send(url: string, method: 'GET', signal: AbortSignal | undefined, cap: BodyCap): Promise<Uint8Array | 404>;
  private async send(url: string, method: 'HEAD', signal?: AbortSignal): Promise<number | 404>;
  private async send(url: string, method: 'GET' | 'HEAD', signal?: AbortSignal, cap?: BodyCap): Promise<Uint8Array | number> {
    let lastErr: unknown;
    for (let attempt = 0; attempt < this.attempts; attempt++) {
      if (attempt > 0) {
        this.retries++;
        await sleep(backoff(this.backoffMs, attempt, lastErr), signal);
      }
      try {
        const res = await request(url, { method, dispatcher: this.agent, signal, headers: this.headers });
        if (res.statusCode === 200 || res.statusCode === 206) {
          if (method === 'HEAD') {
            await res.body.dump();
            return Number(res.headers['content-length'] ?? 0);
          }
          const body = await readCapped(res.body, res.headers['content-length'], url, cap!);
          const len = res.headers['content-length'];
          if (len !== undefined && Number(len) !== body.length) throw new Error(`short body: ${body.length} of ${String(len)} bytes`);
          return body;
        }
        await res.body.dump();
        if (res.statusCode === 404 || res.statusCode === 410) return 404;
        if (TRANSIENT.has(res.statusCode)) {
          lastErr = new HttpStatusError(res.statusCode, retryAfter(res.headers['retry-after']));
          continue;
        }
        throw new IbuError(
          res.statusCode === 401 || res.statusCode === 403 ? 'UNAUTHORIZED' : 'HTTP_ERROR',
          `${method} ${url} answered HTTP ${res.statusCode}; check the store URL and credentials`,
        );
      } catch (err) {
        if (err instanceof IbuError) throw err;
        if (signal?.aborted) throw err;
        lastErr = err;
      }
    }
    const why = lastErr instanceof Error ? lastErr.message : String(lastErr);
    throw new IbuError(
      'STORE_UNAVAILABLE',
      `${method} ${url} failed after ${this.attempts} attempts (${why}); check the network and retry — a fetch resumes where it stopped`,
      { cause: lastErr },
    );
  }
}

/** The largest stored chunk: zstd's bound for the largest chunk the chunker cuts. */
const MAX_STORED_CHUNK_BYTES = zstdBinding.compressBound(MAX_CHUNK_BYTES);
/** The largest release file (manifests are the big ones; see MAX_MANIFEST_BYTES). */
const MAX_FILE_BYTES = 256 * 1024 * 1024;

interface BodyCap {
  maxBytes: number;
  code: 'CHUNK_INVALID' | 'MANIFEST_INVALID';
}

/**
 * Reads a response body, refusing it as soon as the Content-Length or the bytes streamed pass
 * the cap: what the signed metadata allows, so a hostile server cannot fill memory (issue #15).
 */
async function readCapped(body: Dispatcher.ResponseData['body'], lengthHeader: string | string[] | undefined, url: string, cap: BodyCap): Promise<Uint8Array> {
  const tooBig = (n: number) =>
    new IbuError(cap.code, `GET ${url} sent ${n} bytes or more, over the ${cap.maxBytes} this file can be; the store is damaged or hostile`);
  const declared = Number(Array.isArray(lengthHeader) ? lengthHeader[0] : lengthHeader);
  if (Number.isFinite(declared) && declared > cap.maxBytes) {
    body.on('error', () => {}); // destroying an unread body emits an abort error nobody else listens for
    body.destroy();
    throw tooBig(declared);
  }
  return readBytesCapped(body as AsyncIterable<Uint8Array>, cap.maxBytes, tooBig);
}

class HttpStatusError extends Error {
  constructor(
    readonly status: number,
    readonly retryAfterMs: number | undefined,
  ) {
    super(`HTTP ${status}`);
  }
}

function retryAfter(h: string | string[] | undefined): number | undefined {
  const v = Array.isArray(h) ? h[0] : h;
  if (!v) return undefined;
  const s = Number(v);
  if (Number.isFinite(s)) return Math.min(s * 1000, 60_000);
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.max(0, Math.min(t - Date.now(), 60_000)) : undefined;
}

/** Exponential backoff with full jitter (AWS architecture blog): spreads retries of a fleet. */
export function backoff(baseMs: number, attempt: number, lastErr?: unknown): number {
  const cap = Math.min(10_000, baseMs * 2 ** (attempt - 1));
  const jittered = Math.random() * cap;
  if (lastErr instanceof HttpStatusError && lastErr.retryAfterMs !== undefined) return Math.max(jittered, lastErr.retryAfterMs);
  return jittered;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
