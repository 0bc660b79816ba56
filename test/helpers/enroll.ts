import { newDeviceKey, signEnrollment, type EnrollCredentials } from '../../src/fleet/device-proof.js';
import type { EnrollRequest } from '../../src/fleet/protocol.js';

/** An enrollment request signed by a fresh device key (or `key`), at `at` (default: now). */
export function signed(creds: EnrollCredentials, at?: number, key = newDeviceKey()): EnrollRequest {
  return signEnrollment(key, creds, at);
}
