import type { FastifyRequest } from 'fastify';

/**
 * What `ibu serve` writes to its request log, minus credentials (issue #15): query parameters
 * that carry secrets are blanked in the logged URL, and pino's `redact` blanks the Authorization
 * and Cookie headers and token fields of bodies wherever a log call includes them.
 */
const SECRET_PARAM = /token|secret|password|passwd|key|auth/i;
const CENSOR = '[redacted]';

export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const params = url
    .slice(q + 1)
    .split('&')
    .map((p) => {
      const eq = p.indexOf('=');
      const name = eq < 0 ? p : p.slice(0, eq);
      return eq >= 0 && SECRET_PARAM.test(safeDecode(name)) ? `${name}=${CENSOR}` : p;
    });
  return `${url.slice(0, q)}?${params.join('&')}`;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Fastify's default request serializer with the URL redacted. */
export const logSerializers = {
  req(req: FastifyRequest) {
    return {
      method: req.method,
      url: redactUrl(req.url),
      host: req.host,
      remoteAddress: req.ip,
      remotePort: req.socket?.remotePort,
    };
  },
};

const FIELDS = ['token', 'adminToken', 'enrollmentSecret', 'secret', 'password'];
export const logRedact = {
  paths: [
    'req.headers.authorization',
    'req.headers.cookie',
    'headers.authorization',
    'headers.cookie',
    'res.headers["set-cookie"]',
    ...FIELDS.flatMap((f) => [f, `*.${f}`, `body.${f}`, `req.body.${f}`]),
  ],
  censor: CENSOR,
};
