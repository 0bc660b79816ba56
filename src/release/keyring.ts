import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { KeyObject } from 'node:crypto';
import { IbuError, withContext } from '../errors.js';
import { keyIdOf, parsePublicKey, verifyBytes } from './keys.js';
import type { Signature } from './types.js';

/** The file in a keyring directory listing revoked key ids, one per line (`#` starts a comment). */
export const REVOKED_FILE = 'revoked';

/**
 * A keyring directory: every `*.pub` file is a trusted ed25519 public key, and the `revoked` file
 * lists key ids that are no longer trusted even when their `.pub` is still there. The directory is
 * read on every load, so adding a line to `revoked` takes effect at the next verification.
 */
export class Keyring {
  private constructor(
    readonly dir: string,
    readonly trusted: ReadonlyMap<string, KeyObject>,
    readonly revoked: ReadonlySet<string>,
  ) {}

  static async load(dir: string): Promise<Keyring> {
    let names: string[];
    try {
      names = (await fsp.readdir(dir)).sort();
    } catch (err) {
      throw withContext(err, `reading keyring ${dir}`, 'CONFIG_INVALID');
    }
    const trusted = new Map<string, KeyObject>();
    for (const n of names) {
      if (!n.endsWith('.pub')) continue;
      const file = path.join(dir, n);
      const key = parsePublicKey(await fsp.readFile(file), file);
      trusted.set(keyIdOf(key), key);
    }
    const revoked = new Set<string>();
    if (names.includes(REVOKED_FILE)) {
      const text = await fsp.readFile(path.join(dir, REVOKED_FILE), 'utf8');
      for (const line of text.split('\n')) {
        const id = line.replace(/#.*/, '').trim().toLowerCase();
        if (!id) continue;
        if (!/^[0-9a-f]{16}$/.test(id))
          throw new IbuError('CONFIG_INVALID', `${path.join(dir, REVOKED_FILE)}: '${id}' is not a key id (16 hex digits, see \`ibu keys id\`)`);
        revoked.add(id);
      }
    }
    if (trusted.size === 0) throw new IbuError('CONFIG_INVALID', `keyring ${dir} holds no *.pub key; copy the release signing.pub into it`);
    return new Keyring(dir, trusted, revoked);
  }

  /**
   * Succeeds when at least one signature comes from a trusted, non-revoked key and is valid.
   * Otherwise the most telling failure: a bad signature by a trusted key (SIGNATURE_INVALID) beats
   * a revoked key (KEY_REVOKED), which beats keys the keyring does not know (KEY_UNKNOWN).
   */
  verify(payload: Uint8Array, signatures: readonly Signature[], what: string): { keyId: string } {
    let invalid = 0;
    const revoked: string[] = [];
    const unknown: string[] = [];
    for (const s of signatures) {
      const id = String(s.keyId).toLowerCase();
      if (this.revoked.has(id)) {
        revoked.push(id);
        continue;
      }
      const key = this.trusted.get(id);
      if (!key) {
        unknown.push(id);
        continue;
      }
      if (verifyBytes(key, payload, String(s.sig))) return { keyId: id };
      invalid++;
    }
    if (signatures.length === 0) throw new IbuError('SIGNATURE_INVALID', `${what} carries no signature; sign it with \`ibu release sign\``);
    if (invalid > 0) {
      throw new IbuError(
        'SIGNATURE_INVALID',
        `${what} does not match its signature by a trusted key: it was modified after signing (or the signature was); do not use it`,
        { details: { revoked, unknown } },
      );
    }
    if (revoked.length > 0) {
      throw new IbuError(
        'KEY_REVOKED',
        `${what} is signed only by revoked key(s) ${revoked.join(', ')}` +
          `${unknown.length ? ` and unknown key(s) ${unknown.join(', ')}` : ''}; have it re-signed with a current key (\`ibu release sign\`)`,
        { details: { revoked, unknown } },
      );
    }
    throw new IbuError(
      'KEY_UNKNOWN',
      `${what} is signed by key(s) ${unknown.join(', ')}, none of them in keyring ${this.dir}; add the right signing.pub to the keyring if you trust it`,
      { details: { unknown } },
    );
  }
}
