/**
 * One error type for the whole library. Every error carries a stable `code` that callers
 * branch on; only the CLI maps codes to exit statuses and only the server maps them to HTTP.
 */
export const ERROR_CODES = [
  // usage and environment
  'USAGE',
  'CONFIG_INVALID',
  'ROOT_REQUIRED',
  'TOOL_MISSING',
  'TOOL_FAILED',
  'NOT_FOUND',
  'IO_ERROR',
  'NO_SPACE',
  'INTERNAL',
  // images
  'IMAGE_INVALID',
  'IMAGE_NOT_EXT4',
  'IMAGE_TOO_SMALL',
  'IMAGE_NO_KERNEL',
  'IMAGE_SOURCE_MISSING',
  'IMAGE_PATH_NOT_FOUND',
  'IMAGE_FSCK_FAILED',
  // chunks and stores
  'CHUNK_MISSING',
  'CHUNK_INVALID',
  'CHUNK_TRUNCATED',
  'STORE_UNAVAILABLE',
  // releases and signatures
  'MANIFEST_INVALID',
  'SIGNATURE_INVALID',
  'KEY_UNKNOWN',
  'KEY_REVOKED',
  'KEY_INVALID',
  'VERSION_DOWNGRADE',
  'VERSION_INVALID',
  'VERSION_AMBIGUOUS',
  'RATE_LIMITED',
  'RELEASE_NOT_FOUND',
  'IMAGE_HASH_MISMATCH',
  // deltas
  'DELTA_INVALID',
  'DELTA_TRUNCATED',
  'DELTA_WRONG_SOURCE',
  'DELTA_WRONG_PAIR',
  'DELTA_SOURCE_MODIFIED',
  'DELTA_NOT_READY',
  'DELTA_QUEUE_FULL',
  'DELTA_CLIENT_LIMIT',
  // server and network
  'HTTP_ERROR',
  'UNAUTHORIZED',
  'BAD_REQUEST',
  'CONFLICT',
  // agent and boot
  'JOURNAL_INVALID',
  'BOOTENV_INVALID',
  'BOOTENV_UNWRITABLE',
  'NOT_IN_WINDOW',
  'INHIBITED',
  'HEALTH_CHECK_FAILED',
  'MIGRATION_FAILED',
  'VERITY_MISMATCH',
  'IMAGE_IN_USE',
  'NOTHING_TO_DO',
  'ADOPT_UNSUPPORTED',
  // fleet
  'DEVICE_UNKNOWN',
  'ROLLOUT_INVALID',
  // zfs
  'ZFS_FAILED',
  'ZFS_BASE_MISSING',
  'ZFS_STREAM_INVALID',
  'ZFS_POOL_FULL',
  'ZFS_POOL_CORRUPT',
  'ZFS_WRONG_BASE',
  'ZFS_STREAM_TRUNCATED',
  // ibu build (product spec, lock, pool, rootfs)
  'SPEC_INVALID',
  'LOCK_INVALID',
  'LOCK_MISMATCH',
  'PACKAGE_UNKNOWN',
  'PACKAGE_MISSING',
  'PACKAGE_HASH_MISMATCH',
  'VENDOR_DEB_INVALID',
  'MIRROR_UNREACHABLE',
  'HOOK_FAILED',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/**
 * What a code means to the code that handles it, beside its exit status and HTTP status:
 * - `transportFallback`: a download transport failed in a way the next transport can route around
 *   (the image ends up identical, checked against the signed manifest), so prepare goes on;
 * - `policyAnswer`: not a failure but an answer (outside the window, inhibited, nothing to do, a
 *   usage or config problem), so the agent does not record it as the device's last error.
 */
interface CodeTraits {
  transportFallback?: true;
  policyAnswer?: true;
}

const FALLBACK: CodeTraits = { transportFallback: true };
const POLICY: CodeTraits = { policyAnswer: true };

const TRAITS: Partial<Record<ErrorCode, CodeTraits>> = {
  USAGE: POLICY,
  CONFIG_INVALID: POLICY,
  SPEC_INVALID: POLICY,
  NOT_IN_WINDOW: POLICY,
  INHIBITED: POLICY,
  NOTHING_TO_DO: POLICY,
  IMAGE_HASH_MISMATCH: FALLBACK,
  DELTA_INVALID: FALLBACK,
  DELTA_TRUNCATED: FALLBACK,
  DELTA_WRONG_SOURCE: FALLBACK,
  DELTA_WRONG_PAIR: FALLBACK,
  DELTA_SOURCE_MODIFIED: FALLBACK,
  DELTA_NOT_READY: FALLBACK,
  // The server refused to queue the build (docs/server.md "Admission"): chunks always work.
  DELTA_QUEUE_FULL: FALLBACK,
  DELTA_CLIENT_LIMIT: FALLBACK,
  HTTP_ERROR: FALLBACK,
  ZFS_FAILED: FALLBACK,
  ZFS_BASE_MISSING: FALLBACK,
  ZFS_STREAM_INVALID: FALLBACK,
  ZFS_POOL_FULL: FALLBACK,
  ZFS_POOL_CORRUPT: FALLBACK,
  ZFS_WRONG_BASE: FALLBACK,
  ZFS_STREAM_TRUNCATED: FALLBACK,
};

/** A failed download transport with this code lets the planner try the next one (src/agent/transports). */
export function allowsTransportFallback(code: ErrorCode): boolean {
  return TRAITS[code]?.transportFallback === true;
}

/** An answer, not a failure: the agent does not record it as the last error nor report it. */
export function isPolicyAnswer(code: ErrorCode): boolean {
  return TRAITS[code]?.policyAnswer === true;
}

export class IbuError extends Error {
  override name = 'IbuError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: ErrorOptions & { details?: Record<string, unknown> },
  ) {
    super(message, options);
    this.details = options?.details;
  }
  readonly details: Record<string, unknown> | undefined;
}

export function isIbuError(err: unknown, code?: ErrorCode): err is IbuError {
  return err instanceof IbuError && (code === undefined || err.code === code);
}

/** Wraps any thrown value in an IbuError with context, keeping an existing code. */
export function withContext(err: unknown, context: string, fallback: ErrorCode = 'INTERNAL'): IbuError {
  if (err instanceof IbuError) {
    return new IbuError(err.code, `${context}: ${err.message}`, { cause: err, details: err.details });
  }
  const e = err as NodeJS.ErrnoException;
  if (e && e.code === 'ENOSPC') return new IbuError('NO_SPACE', `${context}: no space left on device`, { cause: err });
  if (e && e.code === 'ENOENT') return new IbuError('NOT_FOUND', `${context}: ${e.message}`, { cause: err });
  return new IbuError(fallback, `${context}: ${e?.message ?? String(err)}`, { cause: err });
}
