/**
 * Canonical JSON: object keys sorted by UTF-16 code units, no whitespace, JSON.stringify's
 * escaping and number format. Signer and verifier must produce the same bytes, so this is the
 * one serializer for signed payloads. `undefined` members are dropped, as JSON.stringify does.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'number' && !Number.isFinite(value)) throw new TypeError('canonical JSON cannot encode a non-finite number');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    // Array.from, not map: a hole must become null as in JSON.stringify, not vanish.
    return `[${Array.from(value, (v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
}
