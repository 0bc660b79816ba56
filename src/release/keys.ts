import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError, withContext } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { newEd25519PrivateKey } from '../util/ed25519-key.js';

/** ed25519 signing keys as PEM files: `signing.key` (PKCS#8, mode 0600) and `signing.pub` (SPKI). */
export const PRIVATE_KEY_FILE = 'signing.key';
export const PUBLIC_KEY_FILE = 'signing.pub';

export interface SigningKey {
  keyId: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/** Key id: the first 16 hex digits of sha256 over the raw 32-byte ed25519 public key. */
export function keyIdOf(publicKey: KeyObject): string {
  const jwk = publicKey.export({ format: 'jwk' }) as { x?: string; crv?: string };
  if (jwk.crv !== 'Ed25519' || !jwk.x) throw new IbuError('KEY_INVALID', 'the key is not an ed25519 key; generate one with `ibu keys generate`');
  return createHash('sha256').update(Buffer.from(jwk.x, 'base64url')).digest('hex').slice(0, 16);
}

export async function generateKeys(outDir: string): Promise<{ keyId: string; privateKeyPath: string; publicKeyPath: string }> {
  const priv = path.join(outDir, PRIVATE_KEY_FILE);
  const pub = path.join(outDir, PUBLIC_KEY_FILE);
  await fsp.mkdir(outDir, { recursive: true, mode: 0o700 });
  for (const f of [priv, pub]) {
    if (await exists(f)) throw new IbuError('CONFLICT', `${f} already exists; refusing to overwrite a signing key (choose another --out directory)`);
  }
  const privateKey = newEd25519PrivateKey();
  const publicKey = createPublicKey(privateKey);
  const privPem = privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
  const pubPem = publicKey.export({ format: 'pem', type: 'spki' }) as string;
  try {
    // The temp file is created 0600, so the private key is never readable by others, even briefly.
    await writeFileAtomic(priv, privPem, 0o600);
    await fsp.chmod(priv, 0o600);
    await writeFileAtomic(pub, pubPem, 0o644);
  } catch (err) {
    throw withContext(err, `writing keys to ${outDir}`, 'IO_ERROR');
  }
  return { keyId: keyIdOf(publicKey), privateKeyPath: priv, publicKeyPath: pub };
}

export async function loadSigningKey(file: string): Promise<SigningKey> {
  let pem: Buffer;
  try {
    pem = await fsp.readFile(file);
  } catch (err) {
    throw withContext(err, `reading signing key ${file}`, 'IO_ERROR');
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (err) {
    throw new IbuError('KEY_INVALID', `${file} is not a PEM private key; give the signing.key written by \`ibu keys generate\``, { cause: err });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519')
    throw new IbuError('KEY_INVALID', `${file} is a ${privateKey.asymmetricKeyType} key; ibu signs with ed25519 keys from \`ibu keys generate\``);
  const publicKey = createPublicKey(privateKey);
  return { keyId: keyIdOf(publicKey), privateKey, publicKey };
}

export function parsePublicKey(pem: string | Buffer, source: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (err) {
    throw new IbuError('KEY_INVALID', `${source} is not a PEM public key; copy a signing.pub written by \`ibu keys generate\``, { cause: err });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new IbuError('KEY_INVALID', `${source} is a ${key.asymmetricKeyType} key; ibu keyrings hold ed25519 keys`);
  return key;
}

export function signBytes(key: SigningKey, payload: Uint8Array): string {
  return sign(null, payload, key.privateKey).toString('base64');
}

export function verifyBytes(publicKey: KeyObject, payload: Uint8Array, sigB64: string): boolean {
  const sig = Buffer.from(sigB64, 'base64');
  if (sig.length !== 64 || sig.toString('base64') !== sigB64) return false;
  try {
    return verify(null, payload, publicKey, sig);
  } catch {
    return false;
  }
}

async function exists(f: string): Promise<boolean> {
  try {
    await fsp.lstat(f);
    return true;
  } catch {
    return false;
  }
}
