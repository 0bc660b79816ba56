import { createPrivateKey, randomBytes, type KeyObject } from 'node:crypto';

/** RFC 8410: an Ed25519 private key in PKCS#8 DER is this header followed by the 32-byte seed. */
const ED25519_PKCS8_HEADER = Buffer.from('302e020100300506032b657004220420', 'hex');

/**
 * A fresh ed25519 private key: 32 random bytes (RFC 8032's private key) imported as PKCS#8. Not
 * generateKeyPairSync: under Node 20 its keys share a mutex with the key-generation job, and a
 * garbage collection that frees the job while `export({ format: 'jwk' })` holds that mutex
 * deadlocks the process (the fleet simulator hung in CI at enrollment 628 of 2,000, its main
 * thread in futex_wait under ~KeyGenJob, called by the GC from ExportJWKEdKey).
 */
export function newEd25519PrivateKey(): KeyObject {
  return createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_HEADER, randomBytes(32)]), format: 'der', type: 'pkcs8' });
}
