import { isValidVersion } from '../version.js';

/** Lowercase hex of a 256-bit hash (BLAKE3 or SHA-256): the chunk ids the release side writes. */
export const CHUNK_ID_PATTERN = '^[0-9a-f]{64}$';
export const CHANNEL_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';

/** Ajv formats used by the route schemas; `ibu-version` is src/version.ts's rule. */
export const AJV_FORMATS = {
  'ibu-version': { type: 'string' as const, validate: (s: string) => isValidVersion(s) },
};

export const versionSchema = { type: 'string', format: 'ibu-version', maxLength: 64 } as const;
export const chunkIdSchema = { type: 'string', pattern: CHUNK_ID_PATTERN } as const;
export const channelSchema = { type: 'string', pattern: CHANNEL_PATTERN } as const;

export const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { code: { type: 'string' }, message: { type: 'string' } },
      required: ['code', 'message'],
    },
  },
  required: ['error'],
} as const;

/** The JSON body of a delta that is not (yet) a file: 202 while waiting, 500 when failed. */
export const deltaStateSchema = {
  type: 'object',
  properties: {
    state: { type: 'string', enum: ['queued', 'building', 'failed', 'ready', 'none'] },
    from: { type: 'string' },
    to: { type: 'string' },
    position: { type: 'integer' },
    retryAfter: { type: 'integer' },
    attempts: { type: 'integer' },
    error: { type: 'string' },
    size: { type: 'integer' },
    sha256: { type: 'string' },
  },
  required: ['state', 'from', 'to'],
} as const;

/** Response schema for a route whose success body is a file (binary, not validated). */
export const fileResponses = {
  200: { type: 'string', format: 'binary' },
  206: { type: 'string', format: 'binary' },
  304: { type: 'null' },
  400: errorSchema,
  404: errorSchema,
  416: errorSchema,
} as const;
