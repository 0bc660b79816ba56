import { promises as fsp, constants as fsc } from 'node:fs';
import { IbuError } from '../errors.js';
import { errorFromResponse } from '../http-error-body.js';
import { writeFileAtomic } from '../util/atomic.js';
import { readTextCapped } from '../util/capped-body.js';
import type { CheckinRequest, CheckinResponse, DeviceEvent, EnrollRequest, EnrollResponse } from '../fleet/protocol.js';

/** Every protocol answer (check-in, enrollment, 202 states, errors) is a few KiB; a body past this is refused. */
const MAX_ANSWER_BYTES = 1024 * 1024;

/** The agent's side of the wire protocol in src/fleet/protocol.ts, plus the delta route. */
export class ServerClient {
  constructor(
    readonly baseUrl: string,
    readonly deviceId: string,
    private readonly token: string | null,
    private readonly timeoutMs = 30_000,
  ) {}

  private headers(json: boolean): Record<string, string> {
    const h: Record<string, string> = {};
    if (this.token) h.authorization = `Bearer ${this.token}`;
    if (json) h['content-type'] = 'application/json';
    return h;
  }

  private async post<T>(route: string, body: unknown): Promise<T> {
    const url = `${this.baseUrl}${route}`;
    let res: Response;
    try {
      res = await fetch(url, { method: 'POST', headers: this.headers(true), body: JSON.stringify(body), signal: AbortSignal.timeout(this.timeoutMs) });
    } catch (err) {
      throw new IbuError('HTTP_ERROR', `Cannot reach the server at ${url}: ${(err as Error).message}. Check server.url and the network.`, { cause: err });
    }
    const text = await readTextCapped(res.body, MAX_ANSWER_BYTES, `POST ${url}`);
    if (!res.ok) throw this.refusal(res.status, text, `POST ${route}`);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new IbuError('HTTP_ERROR', `${url} answered something that is not JSON: ${text.slice(0, 100)}`);
    }
  }

  /** A non-2xx answer as an IbuError with the server's code (src/http-error-body.ts), and what to do next when refused. */
  private refusal(status: number, text: string, what: string): IbuError {
    const refused = status === 401 || status === 403;
    const hint = refused ? `The server refused device ${this.deviceId}; re-enroll the device or fix its token.` : '';
    return errorFromResponse(status, text, `${this.baseUrl} ${what}`, hint);
  }

  enroll(req: EnrollRequest): Promise<EnrollResponse> {
    return this.post('/v1/devices/enroll', req);
  }

  checkin(req: CheckinRequest): Promise<CheckinResponse> {
    return this.post(`/v1/devices/${encodeURIComponent(this.deviceId)}/checkin`, req);
  }

  async event(ev: DeviceEvent): Promise<void> {
    await this.post(`/v1/devices/${encodeURIComponent(this.deviceId)}/events`, ev);
  }

  /**
   * Downloads the delta from→to into `out`, resuming a partial file with Range. While the server
   * builds it (202), waits as told by Retry-After (capped, with jitter so a fleet does not come
   * back in lockstep) until `deadline`. Returns false when there is no delta to be had in time
   * (404, 202 past the deadline, or too big for the space given); the caller then uses chunks.
   */
  async downloadDelta(
    from: string,
    to: string,
    out: string,
    o: {
      deadline: number;
      maxRetryAfterSeconds: number;
      maxBytes?: number;
      onProgress?: (done: number, total: number) => void;
      onWait?: (s: string) => void;
      onBytes?: (n: number) => void;
      route?: 'deltas' | 'zfs-streams';
      /** `?encoders=`: the encoders the device can re-encode with (src/server/recompress-deltas.ts). */
      encoders?: string;
    },
  ): Promise<boolean> {
    // The ZFS stream route (docs/zfs.md) behaves exactly like the delta route.
    const query = o.encoders ? `?encoders=${encodeURIComponent(o.encoders)}` : '';
    const url = `${this.baseUrl}/v1/${o.route ?? 'deltas'}/${encodeURIComponent(from)}/${encodeURIComponent(to)}${query}`;
    for (;;) {
      // Resume only against the same delta: If-Range with the ETag saved beside the partial, so a
      // delta evicted and rebuilt in between comes back whole (200) instead of being spliced.
      const etagFile = `${out}.etag`;
      const etag = await fsp.readFile(etagFile, 'utf8').catch(() => '');
      const have = etag
        ? await fsp.stat(out).then(
            (s) => s.size,
            () => 0,
          )
        : 0;
      const headers = this.headers(false);
      if (have > 0) {
        headers.range = `bytes=${have}-`;
        headers['if-range'] = etag;
      }
      let res: Response;
      try {
        res = await fetch(url, { headers, signal: AbortSignal.timeout(this.timeoutMs * 10) });
      } catch (err) {
        throw new IbuError('HTTP_ERROR', `Cannot reach ${url}: ${(err as Error).message}.`, { cause: err });
      }
      if (res.status === 404) {
        await res.body?.cancel();
        return false;
      }
      if (res.status === 202) {
        const info = await readTextCapped(res.body, MAX_ANSWER_BYTES, `GET ${url}`)
          .then((t) => JSON.parse(t) as Record<string, unknown>)
          .catch(() => ({}) as Record<string, unknown>);
        const ra = Number(res.headers.get('retry-after') ?? '5');
        const base = Math.min(Number.isFinite(ra) && ra > 0 ? ra : 5, o.maxRetryAfterSeconds);
        const wait = base * (0.5 + Math.random()); // ±50% jitter
        if (Date.now() + wait * 1000 > o.deadline) return false;
        o.onWait?.(
          `delta ${from}→${to} is ${String((info as { state?: unknown }).state ?? 'queued')} ` +
            `(position ${String((info as { position?: unknown }).position ?? '?')}); retrying in ${wait.toFixed(1)} s`,
        );
        await new Promise((r) => setTimeout(r, wait * 1000));
        continue;
      }
      if (res.status === 416) {
        // Our partial is already whole (or longer than the delta): start over.
        await res.body?.cancel();
        await fsp.rm(out, { force: true });
        continue;
      }
      if (res.status >= 500) {
        // The server could not build this delta (failed for good, or overloaded): chunks remain.
        await res.body?.cancel();
        return false;
      }
      if (res.status !== 200 && res.status !== 206) {
        // A 4xx keeps the server's code: only codes that allow a transport fallback go on to chunks.
        throw this.refusal(res.status, await readTextCapped(res.body, MAX_ANSWER_BYTES, `GET ${url}`).catch(() => ''), `GET ${new URL(url).pathname}`);
      }
      const resumed = res.status === 206;
      const len = Number(res.headers.get('content-length') ?? NaN);
      const total = (resumed ? have : 0) + (Number.isFinite(len) ? len : 0);
      if (o.maxBytes !== undefined && Number.isFinite(len) && total > o.maxBytes) {
        await res.body?.cancel();
        return false;
      }
      if (!resumed) await writeFileAtomic(etagFile, res.headers.get('etag') ?? '');
      const fh = await fsp.open(out, resumed ? fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT : fsc.O_WRONLY | fsc.O_TRUNC | fsc.O_CREAT, 0o644);
      let done = resumed ? have : 0;
      try {
        if (res.body) {
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
            await fh.write(chunk);
            done += chunk.length;
            o.onBytes?.(chunk.length);
            o.onProgress?.(done, total);
          }
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      if (Number.isFinite(len) && done !== total)
        throw new IbuError('HTTP_ERROR', `The delta download from ${url} ended after ${done} of ${total} bytes; it resumes on the next run.`);
      return true;
    }
  }
}
