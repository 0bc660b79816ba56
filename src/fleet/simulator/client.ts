import { Agent, request } from 'undici';
import { IbuError } from '../../errors.js';
import { errorFromResponse } from '../../http-error-body.js';
import type { Measurements } from './report.js';
import { sleep, type Naps } from './naps.js';

type Method = 'GET' | 'POST' | 'PUT';

/**
 * The simulator's HTTP side: pooled connections (undici Agent) to the server, admin calls for the
 * operator and device calls for the simulated devices, both retrying like an agent would
 * (connection refused during the restart, 503 while closing). Error answers keep ibu's code
 * (src/http-error-body.ts).
 */
export class SimClient {
  private readonly agent: Agent;

  constructor(
    private readonly origin: () => string,
    private readonly adminToken: string,
    concurrency: number,
    private readonly naps: Naps,
    private readonly m: Measurements,
  ) {
    this.agent = new Agent({ connections: Math.max(8, Math.min(1024, concurrency)), pipelining: 1, keepAliveTimeout: 30_000 });
  }

  close(): Promise<void> {
    return this.agent.close();
  }

  private async send(method: Method, p: string, body: unknown, token: string | null, origin = this.origin()): Promise<{ status: number; text: string }> {
    const res = await request(origin + p, {
      method,
      dispatcher: this.agent,
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.statusCode, text: await res.body.text() };
  }

  /** One admin GET on one server (replicas: what that one serves). */
  async adminOn<T>(origin: string, p: string): Promise<T> {
    const r = await this.send('GET', p, undefined, this.adminToken, origin);
    if (r.status !== 200) throw errorFromResponse(r.status, r.text, `GET ${p}`);
    return JSON.parse(r.text) as T;
  }

  /** An admin API call; server errors and refused connections are retried for about 10 s. */
  async admin<T>(method: Method, p: string, body?: unknown): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.send(method, p, body, this.adminToken);
        if (r.status >= 200 && r.status < 300) return (r.text ? JSON.parse(r.text) : null) as T;
        if (r.status < 500 || attempt > 50) throw errorFromResponse(r.status, r.text, `${method} ${p}`);
      } catch (err) {
        if (err instanceof IbuError || attempt > 50) throw err;
      }
      await sleep(200);
    }
  }

  /**
   * One device request with retries. `due`: when the device meant to send it (performance.now()
   * time); the latency runs from there, so a late timer, a wait for a connection and the retries
   * all count (no coordinated omission). Null when the simulation stops meanwhile.
   */
  async device<T>(p: string, body: unknown, token: string, isCheckin: boolean, due = performance.now()): Promise<T | null> {
    const t0 = Math.min(due, performance.now());
    for (let attempt = 0; ; attempt++) {
      if (this.naps.stopping && attempt > 0) return null;
      let status = 0;
      let text = '';
      try {
        ({ status, text } = await this.send('POST', p, body, token));
      } catch {
        status = 0;
      }
      if (status === 200) {
        if (isCheckin) this.m.checkinAnswered(t0, performance.now());
        return (text ? JSON.parse(text) : null) as T;
      }
      if (status >= 400 && status < 500) throw errorFromResponse(status, text, `POST ${p}`);
      this.m.retries++;
      await this.naps.nap(Math.min(2000, 100 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random()));
    }
  }
}
