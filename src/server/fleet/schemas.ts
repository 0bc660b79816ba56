import { errorSchema } from '../schemas.js';

/**
 * JSON schemas of the fleet routes (wire types in src/fleet/protocol.ts). Response objects keep
 * properties they do not list (`additionalProperties: true`): Fastify serializes with these
 * schemas, and a record gaining a field must not lose it on the way out.
 */
const obj = (properties: Record<string, unknown>, required?: string[]) =>
  ({ type: 'object', additionalProperties: true, properties, ...(required ? { required } : {}) }) as const;
const str = { type: 'string' } as const;
const strOrNull = { type: ['string', 'null'] } as const;
const int = { type: 'integer' } as const;
const num = { type: 'number' } as const;
const bool = { type: 'boolean' } as const;

export const idParams = { type: 'object', properties: { id: { type: 'string', minLength: 1, maxLength: 128 } }, required: ['id'] } as const;
export const rolloutIdParams = { type: 'object', properties: { id: { type: 'string', pattern: '^[0-9]{1,15}$' } }, required: ['id'] } as const;
export const channelParams = { type: 'object', properties: { channel: { type: 'string', minLength: 1, maxLength: 64 } }, required: ['channel'] } as const;
export const nameParams = { type: 'object', properties: { name: { type: 'string', minLength: 1, maxLength: 64 } }, required: ['name'] } as const;
export const versionProp = { type: 'string', minLength: 1, maxLength: 64 } as const;
/** In requests: a device's last error, capped so a report cannot fill the database. */
export const errorProp = {
  type: ['object', 'null'],
  properties: { code: { type: 'string', maxLength: 64 }, message: { type: 'string', maxLength: 4096 } },
} as const;

const windowSchema = {
  type: ['object', 'null'],
  properties: {
    timeZone: str,
    rules: { type: 'array', items: { type: 'object', properties: { days: { type: 'array', items: { type: 'integer' } }, start: str, end: str } } },
  },
} as const;

export const okSchema = obj({ ok: bool }, ['ok']);
export const enrollResponse = { type: 'object', properties: { deviceId: str, token: str } } as const;
export const checkinResponse = {
  type: 'object',
  properties: {
    target: { type: ['object', 'null'], properties: { version: str, mandatory: bool, manifestUrl: str } },
    deltaReady: bool,
    window: windowSchema,
    rebootLease: { type: 'object', properties: { granted: bool, expiresAt: str } },
    nextCheckinSeconds: num,
  },
} as const;

const spec = obj({ waves: { type: 'array', items: num }, canaryGroups: { type: 'array', items: str } });
export const releaseSchema = obj({ channel: str, version: str, mandatory: bool, manifestUrl: str, createdAt: num, source: str }, ['channel', 'version']);
export const rolloutSchema = obj({ id: int, channel: str, version: str, spec, state: str, wave: int, reason: strOrNull }, ['id', 'version', 'state']);
export const rolloutViewSchema = obj(
  {
    ...rolloutSchema.properties,
    waves: { type: 'array', items: obj({ label: str, devices: int, done: int, open: bool }) },
    counts: obj({}),
  },
  ['id', 'version', 'state', 'waves', 'counts'],
);
export const groupSchema = obj({ name: str, window: windowSchema, maxConcurrentReboots: int, leaseTtlSeconds: num }, ['name']);
export const deviceSchema = obj(
  {
    id: str,
    group: str,
    channel: str,
    version: strOrNull,
    state: strOrNull,
    lastCheckin: strOrNull,
    enrolledAt: str,
    flags: { type: 'array', items: str },
    publicKey: strOrNull,
    tokenRevoked: bool,
  },
  ['id'],
);
export const versionCountsSchema = { type: 'array', items: obj({ version: str, devices: int }, ['version', 'devices']) } as const;
export const policySchema = obj({ rollout: { type: ['object', 'null'], additionalProperties: true } });
export const settingsSchema = obj({ checkinIntervalSeconds: num, activeCheckinIntervalSeconds: num, jitter: num, enrollmentSecretSet: bool });
export const summarySchema = obj({
  devices: int,
  enrolled: int,
  versions: versionCountsSchema,
  releases: { type: 'array', items: releaseSchema },
  rollouts: { type: 'array', items: rolloutViewSchema },
  problems: { type: 'array', items: deviceSchema },
  leases: { type: 'array', items: obj({ deviceId: str, group: str, expiresAt: str }) },
  groups: { type: 'array', items: groupSchema },
  stats: obj({}),
});

/** Error answers every fleet route may give. */
export const deviceErrors = { 400: errorSchema, 401: errorSchema, 404: errorSchema, 409: errorSchema, 500: errorSchema, 503: errorSchema } as const;
export const adminErrors = { ...deviceErrors, 403: errorSchema } as const;

/** The response schemas of a route: its success bodies and the shared error answers. */
export function responses(ok: Record<number, unknown>, errors: Record<number, unknown> = adminErrors): Record<number, unknown> {
  return { ...errors, ...ok };
}
