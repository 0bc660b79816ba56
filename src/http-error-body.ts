import { ERROR_CODES, IbuError, type ErrorCode } from './errors.js';

/**
 * The one shape of an error on the wire, `{ error: { code, message } }`: the server writes it
 * (src/server/http-errors.ts) and every client (agent, admin client, simulator, HTTP store)
 * reads it back here, so a code that crosses HTTP stays the same code on the other side.
 */
export interface ErrorBody {
  error: { code: string; message: string };
}

export function errorBody(code: string, message: string): ErrorBody {
  return { error: { code, message } };
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && (ERROR_CODES as readonly string[]).includes(code);
}

/**
 * Turns a non-2xx answer into an IbuError. The server's code is kept when it is one of ours;
 * otherwise 401/403 become UNAUTHORIZED and anything else HTTP_ERROR. `what` names the request
 * for the message ("POST /v1/devices/x/checkin"), `hint` says what to do next.
 */
export function errorFromResponse(status: number, text: string, what: string, hint = ''): IbuError {
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  const e = (parsed as Partial<ErrorBody> | null)?.error;
  const known = isErrorCode(e?.code) ? e.code : null;
  const code: ErrorCode = known ?? (status === 401 || status === 403 ? 'UNAUTHORIZED' : 'HTTP_ERROR');
  const detail = typeof e?.message === 'string' ? e.message : text.slice(0, 300);
  const msg = `${what} answered HTTP ${status}${detail ? `: ${detail}` : ''}${hint ? ` ${hint}` : ''}`;
  return new IbuError(code, msg, { details: { status } });
}
