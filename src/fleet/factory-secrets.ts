import { IbuError } from '../errors.js';
import { DEVICE_ID_RE } from './names.js';

/**
 * The vendor's factory-secret list: one device per line, `<id> <sha256-hex>` (space, tab or comma
 * between), `#` comments and blank lines ignored. Only hashes travel: the secrets stay in the
 * factory and on the devices.
 */
export function parseFactorySecrets(text: string): Array<{ id: string; secretHash: string }> {
  const out: Array<{ id: string; secretHash: string }> = [];
  const seen = new Set<string>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    const [id, hash, ...rest] = line.split(/[\s,]+/);
    if (!id || !hash || rest.length || !DEVICE_ID_RE.test(id) || !/^[0-9a-fA-F]{64}$/.test(hash))
      throw new IbuError('USAGE', `line ${i + 1}: expected "<device id> <sha256 hex of its secret>", got '${line.slice(0, 100)}'.`);
    if (seen.has(id)) throw new IbuError('USAGE', `line ${i + 1}: device ${id} is listed twice.`);
    seen.add(id);
    out.push({ id, secretHash: hash.toLowerCase() });
  });
  return out;
}
