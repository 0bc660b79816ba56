import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  type GetObjectCommandOutput,
} from '@aws-sdk/client-s3';
import { MAX_CHUNK_BYTES, zstdBinding } from '../chunk/compress.js';
import { IbuError, type ErrorCode } from '../errors.js';
import { assertRelPath, chunkPath } from './layout.js';
import type { ChunkId, ListableStore, RemoteStore, SizedStore, StoredFile, WriteStore } from './store.js';

/** Where the bucket is and how to reach it; anything unset comes from the AWS SDK's own chain (env, ~/.aws). */
export interface S3StoreOptions {
  /** e.g. `http://127.0.0.1:7480` for radosgw or MinIO; unset = AWS itself. */
  endpoint?: string;
  region?: string;
  /** `http://host/bucket/key` instead of `http://bucket.host/key`: what radosgw and MinIO need. Default: true when an endpoint is given. */
  forcePathStyle?: boolean;
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Attempts per request (the SDK retries throttling, 5xx and network errors with backoff). */
  maxAttempts?: number;
  /**
   * Requests kept in flight by publish and fetch (IBU_S3_IN_FLIGHT). Default 32: each request is a
   * round trip of milliseconds to an object gateway, where a disk answers in microseconds, so it
   * takes more of them at once to keep the link busy (docs/benchmarks.md "Releases on S3").
   */
  inFlight?: number;
}

/** Requests in flight when nothing says otherwise. */
export const S3_DEFAULT_IN_FLIGHT = 32;

/**
 * The S3 settings from the environment, the way the AWS tools read them (AWS_ENDPOINT_URL_S3 or
 * AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), plus IBU_S3_PATH_STYLE=0|1.
 * Child processes of `ibu serve` inherit them, so one place resolves them for every process.
 */
export function s3OptionsFromEnv(env: NodeJS.ProcessEnv = process.env): S3StoreOptions {
  const o: S3StoreOptions = {};
  const endpoint = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL;
  if (endpoint) o.endpoint = endpoint;
  if (env.AWS_REGION || env.AWS_DEFAULT_REGION) o.region = env.AWS_REGION || env.AWS_DEFAULT_REGION;
  if (env.IBU_S3_PATH_STYLE === '0' || env.IBU_S3_PATH_STYLE === '1') o.forcePathStyle = env.IBU_S3_PATH_STYLE === '1';
  if (env.IBU_S3_IN_FLIGHT) o.inFlight = parseInFlight(env.IBU_S3_IN_FLIGHT, 'IBU_S3_IN_FLIGHT');
  return o;
}

/** The same settings as environment variables (for the child processes a server starts). */
export function s3OptionsToEnv(o: S3StoreOptions): Record<string, string> {
  const env: Record<string, string> = {};
  if (o.endpoint) env.AWS_ENDPOINT_URL_S3 = o.endpoint;
  if (o.region) env.AWS_REGION = o.region;
  if (o.forcePathStyle !== undefined) env.IBU_S3_PATH_STYLE = o.forcePathStyle ? '1' : '0';
  if (o.inFlight !== undefined) env.IBU_S3_IN_FLIGHT = String(o.inFlight);
  if (o.accessKeyId && o.secretAccessKey) {
    env.AWS_ACCESS_KEY_ID = o.accessKeyId;
    env.AWS_SECRET_ACCESS_KEY = o.secretAccessKey;
  }
  return env;
}

/** A whole number of requests from 1 to 256, or a USAGE error naming where it came from. */
export function parseInFlight(v: string, what: string): number {
  const n = /^\d{1,3}$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= 256)) throw new IbuError('USAGE', `${what} must be a number of requests from 1 to 256 (got '${v}')`);
  return n;
}

export function isS3Url(location: string): boolean {
  return /^s3:\/\//i.test(location);
}

/** `s3://bucket/some/prefix` → bucket and key prefix (no leading or trailing slash; '' = bucket root). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/i.exec(url);
  const bucket = m?.[1];
  if (!m || !bucket || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new IbuError('USAGE', `'${url}' is not an S3 store URL; give s3://bucket[/prefix] (bucket: 3-63 lowercase letters, digits, '.', '-')`);
  }
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  if (prefix !== '') assertRelPath(prefix);
  return { bucket, prefix };
}

// The SDK warns on every start that its 2027 releases need Node 22; ibu runs on Node 20 by design
// (README) with the version package-lock.json pins, so the warning would only be noise on stderr.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** The largest stored chunk: zstd's bound for the largest chunk the chunker cuts. */
const MAX_STORED_CHUNK_BYTES = zstdBinding.compressBound(MAX_CHUNK_BYTES);

/**
 * A store in an S3 bucket under a key prefix, in the same layout as the directory store
 * (src/store/layout.ts): `<prefix>/chunks/ab12/<id>.zst`, `<prefix>/releases/<v>/manifest.json`, ...
 * A PUT is atomic per object (a reader sees the old object or the new one, never part), which is
 * what the directory store gets from rename; publish writes every chunk before the manifest and
 * the manifest before the channel, so a reader never sees a release whose chunks are missing.
 * S3 has no fsync to batch: a PUT is durable when it returns, so there is no `flush`.
 */
export class S3Store implements WriteStore, SizedStore, ListableStore, RemoteStore {
  readonly location: string;
  readonly inFlight: number;
  readonly bucket: string;
  readonly prefix: string;
  readonly options: S3StoreOptions;
  readonly client: S3Client;

  constructor(url: string, opts: S3StoreOptions = {}) {
    const { bucket, prefix } = parseS3Url(url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.location = `s3://${bucket}${prefix ? '/' + prefix : ''}`;
    const merged = { ...s3OptionsFromEnv(), ...definedOnly(opts) };
    this.options = merged;
    this.inFlight = merged.inFlight ?? S3_DEFAULT_IN_FLIGHT;
    // The SDK's agent allows 50 sockets; never fewer than the requests we keep in flight.
    const agent = { maxSockets: Math.max(50, this.inFlight) };
    this.client = new S3Client({
      requestHandler: { httpAgent: agent, httpsAgent: agent },
      ...(merged.endpoint ? { endpoint: merged.endpoint } : {}),
      region: merged.region ?? 'us-east-1',
      forcePathStyle: merged.forcePathStyle ?? merged.endpoint !== undefined,
      maxAttempts: merged.maxAttempts ?? 5,
      // Checksums only where S3 requires them: the SDK's default CRC32 trailers (aws-chunked
      // uploads) are newer than some S3 servers (radosgw, MinIO releases); chunks carry their own hash.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      ...(merged.accessKeyId && merged.secretAccessKey ? { credentials: { accessKeyId: merged.accessKeyId, secretAccessKey: merged.secretAccessKey } } : {}),
    });
  }

  /** The object key of a store path. */
  key(relPath: string): string {
    return this.prefix ? `${this.prefix}/${relPath}` : relPath;
  }

  async getChunk(id: ChunkId, signal?: AbortSignal, maxBytes = MAX_STORED_CHUNK_BYTES): Promise<Uint8Array> {
    const rel = chunkPath(id);
    const missing = () => new IbuError('CHUNK_MISSING', `chunk ${id} is missing from ${this.location}; re-publish the release or check the bucket and prefix`);
    const res = await this.call(
      () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(rel) }), { abortSignal: signal }),
      rel,
      missing,
    );
    return this.body(res, rel, maxBytes, 'CHUNK_INVALID');
  }

  async hasChunk(id: ChunkId, signal?: AbortSignal): Promise<boolean> {
    return (await this.chunkSize(id, signal)) !== undefined;
  }

  async chunkSize(id: ChunkId, signal?: AbortSignal): Promise<number | undefined> {
    return (await this.statFile(chunkPath(id), signal))?.size;
  }

  async getFile(relPath: string, signal?: AbortSignal): Promise<Uint8Array> {
    return (await this.readFile(relPath, signal)).data;
  }

  /** A release file with its ETag (the server's validator for manifests). */
  async readFile(relPath: string, signal?: AbortSignal): Promise<{ data: Uint8Array } & StoredFile> {
    assertRelPath(relPath);
    const missing = () => new IbuError('NOT_FOUND', `${relPath} does not exist in ${this.location}`);
    const res = await this.call(
      () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(relPath) }), { abortSignal: signal }),
      relPath,
      missing,
    );
    const data = await this.body(res, relPath, MAX_FILE_BYTES, 'MANIFEST_INVALID');
    return { data, size: data.length, etag: res.ETag ?? '' };
  }

  async statFile(relPath: string, signal?: AbortSignal): Promise<StoredFile | undefined> {
    assertRelPath(relPath);
    try {
      const h = await this.call(
        () => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(relPath) }), { abortSignal: signal }),
        relPath,
        () => {
          throw NOT_THERE;
        },
      );
      return { size: h.ContentLength ?? 0, etag: h.ETag ?? '' };
    } catch (err) {
      if (err === NOT_THERE) return undefined;
      throw err;
    }
  }

  /** PUT is atomic per object; the same bytes under the same id make a second PUT harmless, so no HEAD first. */
  async putChunk(id: ChunkId, data: Uint8Array): Promise<void> {
    const rel = chunkPath(id);
    await this.call(
      () => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key(rel), Body: data, ContentType: 'application/zstd' })),
      rel,
    );
  }

  async putFile(relPath: string, data: Uint8Array): Promise<void> {
    assertRelPath(relPath);
    const type = relPath.endsWith('.json') ? 'application/json' : 'application/octet-stream';
    await this.call(() => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key(relPath), Body: data, ContentType: type })), relPath);
  }

  async deleteFile(relPath: string): Promise<void> {
    assertRelPath(relPath);
    await this.call(() => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(relPath) })), relPath);
  }

  /** Names one level under a store directory (`channels` → `stable.json`; `releases` → `1.0`), sorted. */
  async list(dir: string, signal?: AbortSignal): Promise<string[]> {
    assertRelPath(dir);
    const base = `${this.key(dir)}/`;
    const out = new Set<string>();
    let token: string | undefined;
    do {
      const page = await this.call(
        () =>
          this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: base, Delimiter: '/', ContinuationToken: token }), { abortSignal: signal }),
        dir,
      );
      for (const c of page.Contents ?? []) if (c.Key) out.add(c.Key.slice(base.length));
      for (const p of page.CommonPrefixes ?? []) if (p.Prefix) out.add(p.Prefix.slice(base.length).replace(/\/$/, ''));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return [...out].filter((n) => n !== '').sort();
  }

  /**
   * Every chunk in the store with its stored size, from one paginated ListObjectsV2 of `chunks/`
   * (1000 keys a page): publish asks this once instead of a HEAD round trip per chunk.
   */
  async chunkSizes(signal?: AbortSignal): Promise<Map<ChunkId, number>> {
    const base = `${this.key('chunks')}/`;
    const out = new Map<ChunkId, number>();
    let token: string | undefined;
    do {
      const page = await this.call(
        () => this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: base, ContinuationToken: token }), { abortSignal: signal }),
        'chunks',
      );
      for (const c of page.Contents ?? []) {
        const m = /\/([0-9a-f]{64})\.zst$/.exec(c.Key ?? '');
        if (m) out.set(m[1] as ChunkId, c.Size ?? 0);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  private async body(res: GetObjectCommandOutput, rel: string, maxBytes: number, code: 'CHUNK_INVALID' | 'MANIFEST_INVALID'): Promise<Uint8Array> {
    const tooBig = (n: number) => new IbuError(code, `${rel} in ${this.location} is ${n} bytes, over the ${maxBytes} it can be; the store is damaged`);
    if (res.ContentLength !== undefined && res.ContentLength > maxBytes) {
      (res.Body as { destroy?: () => void } | undefined)?.destroy?.();
      throw tooBig(res.ContentLength);
    }
    if (!res.Body) return new Uint8Array(0);
    const bytes = await res.Body.transformToByteArray();
    if (bytes.length > maxBytes) throw tooBig(bytes.length);
    return bytes;
  }

  /** One S3 call with its errors as IbuErrors: 404 → `missing()`, 403 → UNAUTHORIZED, the rest STORE_UNAVAILABLE. */
  private async call<T>(fn: () => Promise<T>, rel: string, missing?: () => IbuError): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err === NOT_THERE) throw err;
      const status = err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
      const name = (err as { name?: string }).name;
      if (missing && (status === 404 || name === 'NoSuchKey' || name === 'NotFound')) throw missing();
      if (name === 'AbortError') throw err;
      let code: ErrorCode = 'STORE_UNAVAILABLE';
      let hint = 'check the endpoint and the network and retry';
      if (status === 401 || status === 403) {
        code = 'UNAUTHORIZED';
        hint = 'check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket policy';
      } else if (name === 'NoSuchBucket') {
        code = 'NOT_FOUND';
        hint = `create the bucket '${this.bucket}' first`;
      }
      const why = err instanceof Error ? `${name ?? 'Error'}: ${err.message}` : String(err);
      throw new IbuError(code, `S3 request for ${rel} in ${this.location} failed (${why}); ${hint}`, { cause: err });
    }
  }
}

/** The largest release file (manifests are the big ones). */
const MAX_FILE_BYTES = 256 * 1024 * 1024;
const NOT_THERE = new Error('not there');

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
