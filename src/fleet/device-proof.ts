import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { newEd25519PrivateKey } from '../util/ed25519-key.js';
import type { EnrollRequest } from './protocol.js';

/**
 * A device's own identity: an ed25519 key pair the device generates and never sends, bound to
 * its id at the first enrollment. Every enrollment carries a signature over the id, the public
 * key and the signing time, so a second enrollment of a bound id succeeds only for the holder of
 * that key. Shared by the agent (signs), the server (verifies) and the simulator.
 */

/** How far the signing time may lie from the server's clock (device clocks drift; replays are refused anyway). */
export const ENROLL_PROOF_WINDOW_MS = 15 * 60_000;

export type EnrollCredentials = Omit<EnrollRequest, 'publicKey' | 'at' | 'proof'>;

/** A new device key (src/util/ed25519-key.ts says why it is not made by generateKeyPairSync). */
export function newDeviceKey(): KeyObject {
  return newEd25519PrivateKey();
}

/** The raw 32-byte public key, base64url: what the server stores and compares. */
export function devicePublicKey(privateKey: KeyObject): string {
  const x = createPublicKey(privateKey).export({ format: 'jwk' }).x;
  if (!x) throw new Error('not an ed25519 key');
  return x;
}

function proofMessage(deviceId: string, publicKey: string, at: number): Buffer {
  return Buffer.from(`ibu-enroll-v1\n${deviceId}\n${publicKey}\n${at}`);
}

/** An enrollment request signed with the device key. */
export function signEnrollment(privateKey: KeyObject, creds: EnrollCredentials, at = Date.now()): EnrollRequest {
  const publicKey = devicePublicKey(privateKey);
  const proof = sign(null, proofMessage(creds.deviceId, publicKey, at), privateKey).toString('base64url');
  return { ...creds, publicKey, at, proof };
}

/** True when `proof` is the signature of the request's own public key (proof of possession). */
export function verifyEnrollment(req: Pick<EnrollRequest, 'deviceId' | 'publicKey' | 'at' | 'proof'>): boolean {
  try {
    if (!/^[A-Za-z0-9_-]{43}$/.test(req.publicKey) || !Number.isSafeInteger(req.at)) return false;
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: req.publicKey }, format: 'jwk' });
    return verify(null, proofMessage(req.deviceId, req.publicKey, req.at), key, Buffer.from(req.proof, 'base64url'));
  } catch {
    return false; // a malformed key or signature is simply not a proof
  }
}
