import { request } from 'undici';
import { IbuError } from '../errors.js';
import { errorFromResponse } from '../http-error-body.js';
import { readTextCapped } from '../util/capped-body.js';

/** The biggest admin answers (a 100,000-device page, the summary) stay well under this. */
const MAX_ADMIN_ANSWER_BYTES = 256 * 1024 * 1024;

/**
 * A small client for the fleet admin API (/v1/admin/fleet), used by `ibu rollout` and
 * `ibu fleet`. Errors from the server keep their code: `{ error: { code, message } }`.
 */
export class FleetAdminClient {
  constructor(
    readonly server: string,
    private readonly token: string,
  ) {}

  static fromOptions(o: { server?: string; token?: string }): FleetAdminClient {
    const server = o.server ?? process.env.IBU_SERVER;
    const token = o.token ?? process.env.IBU_ADMIN_TOKEN;
    if (!server) throw new IbuError('USAGE', 'Give the server with --server URL (or IBU_SERVER), e.g. --server http://127.0.0.1:8080.');
    if (!token) throw new IbuError('USAGE', 'Give the admin token with --token TOKEN (or IBU_ADMIN_TOKEN), the one `ibu serve` was started with.');
    try {
      new URL(server);
    } catch {
      throw new IbuError('USAGE', `'${server}' is not a URL; use e.g. http://127.0.0.1:8080.`);
    }
    return new FleetAdminClient(server.replace(/\/+$/, ''), token);
  }

  async call<T>(method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown): Promise<T> {
    let res;
    try {
      res = await request(this.server + path, {
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new IbuError('HTTP_ERROR', `Cannot reach ${this.server}: ${(err as Error).message}. Is \`ibu serve\` running there?`, { cause: err });
    }
    const text = await readTextCapped(res.body, MAX_ADMIN_ANSWER_BYTES, `${method} ${path}`);
    if (res.statusCode >= 400) {
      const hint = res.statusCode === 401 || res.statusCode === 403 ? 'Check --token (or IBU_ADMIN_TOKEN): it is the token `ibu serve` was started with.' : '';
      throw errorFromResponse(res.statusCode, text, `${method} ${path}`, hint);
    }
    try {
      return (text ? JSON.parse(text) : null) as T;
    } catch {
      throw new IbuError('HTTP_ERROR', `${method} ${path} answered ${res.statusCode} with something that is not JSON; is ${this.server} an ibu server?`);
    }
  }
}
