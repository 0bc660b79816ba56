import { createPrivateKey, type KeyObject } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { newDeviceKey } from '../fleet/device-proof.js';
import { writeFileAtomic } from '../util/atomic.js';

/**
 * The device's enrollment key (ed25519, PKCS#8 PEM, mode 0600), created at the first enrollment.
 * It lives beside the token on the persistent state, outside any image, so it survives upgrades.
 * A key file that exists but cannot be read is an error, never replaced: a new key would lock
 * the device out of re-enrolling.
 */
export async function loadOrCreateDeviceKey(file: string): Promise<KeyObject> {
  let pem: string;
  try {
    pem = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      throw new IbuError('CONFIG_INVALID', `Cannot read the device key ${file}: ${(err as Error).message}.`, { cause: err });
    const key = newDeviceKey();
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await writeFileAtomic(file, key.export({ format: 'pem', type: 'pkcs8' }).toString(), 0o600);
    return key;
  }
  try {
    const key = createPrivateKey(pem);
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`a ${key.asymmetricKeyType} key, not ed25519`);
    return key;
  } catch (err) {
    throw new IbuError(
      'CONFIG_INVALID',
      `The device key ${file} is damaged (${(err as Error).message}). Restore it, or ask the fleet admin to reset this device's identity ` +
        'and remove the file to enroll with a new key.',
      { cause: err },
    );
  }
}
