/**
 * Property-based fuzzing of the manifest parser (issue #15 item 9): arbitrary bytes, arbitrary
 * JSON, byte flips of a real signed manifest, and mutated manifests (a field replaced by any
 * JSON value, huge numbers, deep nesting, long strings) re-signed with the trusted key so the
 * structural checks are reached. Every outcome is a manifest or an IbuError with one of the
 * manifest codes, never a TypeError or RangeError. fast-check prints the seed and the shrunk
 * counterexample on failure; the counterexamples found so far are fixed cases at the end.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import fc from 'fast-check';
import { IbuError } from '../../src/errors.js';
import { Keyring } from '../../src/release/keyring.js';
import { generateKeys, loadSigningKey, type SigningKey } from '../../src/release/keys.js';
import { parseAndVerifyManifest, parseManifestUnverified, serializeManifest, signManifest } from '../../src/release/manifest.js';
import type { Manifest } from '../../src/release/types.js';
import { tmpDir } from './helpers.js';

const CODES = new Set(['MANIFEST_INVALID', 'SIGNATURE_INVALID', 'KEY_UNKNOWN', 'KEY_REVOKED']);

const HASH = (c: string) => c.repeat(64);

/** A small manifest as publish writes it: three chunks (one a zero run) tiling a 40 KiB image. */
function sampleManifest(): Manifest {
  return {
    format: 1,
    product: 'fuzz',
    version: '2026.11.2',
    channel: 'stable',
    createdAt: '2026-11-02T10:00:00.000Z',
    image: { size: 40960, sha256: HASH('a'), blockSize: 4096 },
    chunking: { algorithm: 'fastcdc', min: 4096, avg: 16384, max: 65536, hash: 'blake3', compression: 'zstd', gear: 'ibu1', normalization: 2, level: 3 },
    chunks: [
      { id: HASH('b'), offset: 0, size: 16384, csize: 900 },
      { id: HASH('0'), offset: 16384, size: 8192, zero: true },
      { id: HASH('c'), offset: 24576, size: 16384 },
    ],
    files: [{ path: '/vmlinuz', type: 'file', size: 100, hash: HASH('d'), extents: [[0, 3, 1]] }],
    kernel: '/vmlinuz',
    initrd: '/initrd.img',
    signatures: [],
  };
}

/** Succeeds, or fails with an IbuError whose code is one of the manifest codes; anything else is a bug. */
function expectParsedOrCoded(run: () => unknown): 'ok' | string {
  try {
    run();
    return 'ok';
  } catch (err) {
    if (err instanceof IbuError && CODES.has(err.code) && err.message.length > 0) return err.code;
    throw err;
  }
}

/** Values that break naive code: huge and odd numbers, long strings, deep nesting, wrong types. */
const hostile: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.constantFrom(1e308, -1e308, 2 ** 53, 2 ** 53 + 2, -0, 0.5, -1, Number.MAX_SAFE_INTEGER, '', '0'.repeat(64), [], {}, null, true),
  fc.nat({ max: 100_000 }).map((n) => 'x'.repeat(n)),
  fc.integer({ min: 1, max: 20_000 }).map((d) => JSON.parse('['.repeat(d) + ']'.repeat(d)) as unknown),
);

/** Places in a manifest a mutation can hit: top-level fields, nested fields, chunk fields. */
const FIELD_PATHS: string[][] = [
  ['format'],
  ['version'],
  ['channel'],
  ['createdAt'],
  ['image'],
  ['image', 'size'],
  ['image', 'sha256'],
  ['image', 'blockSize'],
  ['chunking'],
  ['chunking', 'min'],
  ['chunking', 'max'],
  ['chunking', 'hash'],
  ['chunking', 'algorithm'],
  ['chunks'],
  ['chunks', '0'],
  ['chunks', '1', 'offset'],
  ['chunks', '1', 'size'],
  ['chunks', '1', 'zero'],
  ['chunks', '0', 'csize'],
  ['chunks', '2', 'id'],
  ['files'],
  ['files', '0'],
  ['kernel'],
  ['initrd'],
  ['artifacts'],
  ['zfs'],
  ['extra'],
];

function setPath(obj: Record<string, unknown>, p: string[], value: unknown, remove: boolean): void {
  let at: Record<string, unknown> = obj;
  for (const k of p.slice(0, -1)) {
    const next = at[k];
    if (!next || typeof next !== 'object') return;
    at = next as Record<string, unknown>;
  }
  const last = p[p.length - 1]!;
  if (remove) delete at[last];
  else at[last] = value;
}

const mutation = fc.record({ path: fc.constantFrom(...FIELD_PATHS), value: hostile, remove: fc.boolean() });

describe('manifest parser fuzzing', () => {
  const tmp = tmpDir('manifest-fuzz');
  let key: SigningKey;
  let keyring: Keyring;
  let good: Buffer;

  before(async () => {
    const dir = path.join(tmp.dir, 'keys');
    await generateKeys(dir);
    key = await loadSigningKey(path.join(dir, 'signing.key'));
    keyring = await Keyring.load(dir);
    good = serializeManifest(signManifest(sampleManifest(), [key]));
    // The sample must be valid, or the mutations below start from a refusal.
    assert.equal(parseAndVerifyManifest(good, keyring).manifest.version, '2026.11.2');
  });
  after(() => tmp.cleanup());

  it('arbitrary bytes and arbitrary JSON: a manifest or a manifest error code', () => {
    const input = fc.oneof(
      fc.uint8Array({ maxLength: 600 }),
      fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? 'null')),
      fc.object().map((v) => Buffer.from(JSON.stringify(v))),
    );
    fc.assert(
      fc.property(input, (b) => {
        expectParsedOrCoded(() => parseManifestUnverified(b));
        expectParsedOrCoded(() => parseAndVerifyManifest(b, keyring));
      }),
      { numRuns: 1500 },
    );
  });

  it('byte flips, truncations and splices of a real signed manifest: a manifest or a manifest error code', () => {
    const edit = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.nat(), v: fc.constant(0) }),
      fc.record({ kind: fc.constant('splice' as const), at: fc.nat(), v: fc.nat() }),
    );
    let refused = 0;
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 4 }), (edits) => {
        let b = Buffer.from(good);
        for (const e of edits) {
          const at = e.at % Math.max(1, b.length);
          if (e.kind === 'flip') b[at] = e.v;
          else if (e.kind === 'cut') b = b.subarray(0, at);
          else b = Buffer.concat([b.subarray(0, at), b.subarray(e.v % Math.max(1, b.length))]);
        }
        if (expectParsedOrCoded(() => parseAndVerifyManifest(b, keyring)) !== 'ok') refused++;
        expectParsedOrCoded(() => parseManifestUnverified(b));
      }),
      { numRuns: 1500 },
    );
    // The signature covers every byte that means something, so nearly every edit is refused.
    assert.ok(refused > 1000, `only ${refused} of 1500 edited manifests were refused`);
  });

  it('mutated manifests, re-signed with the trusted key: valid or MANIFEST_INVALID', () => {
    const seen = { ok: 0, invalid: 0 };
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 3 }), (ms) => {
        const m = structuredClone(sampleManifest()) as unknown as Record<string, unknown>;
        for (const x of ms) setPath(m, x.path, x.value, x.remove);
        // The signer serializes these too; a value it cannot serialize never reaches a device.
        let signed: Buffer;
        try {
          signed = serializeManifest(signManifest(m as unknown as Manifest, [key]));
        } catch {
          return;
        }
        const code = expectParsedOrCoded(() => parseAndVerifyManifest(signed, keyring));
        assert.ok(code === 'ok' || code === 'MANIFEST_INVALID', code);
        seen[code === 'ok' ? 'ok' : 'invalid']++;
        if (code === 'ok') {
          // What the parser accepts, fetch relies on: chunks tile the image.
          const v = parseManifestUnverified(signed);
          assert.equal(
            v.chunks.reduce((n, c) => n + c.size, 0),
            v.image.size,
          );
        }
      }),
      { numRuns: 600 },
    );
    // Both outcomes must occur, or the mutations miss the fields the parser checks.
    assert.ok(seen.ok > 10 && seen.invalid > 100, JSON.stringify(seen));
  });

  it('hostile values in a signed manifest never escape as TypeError or RangeError', () => {
    // Written as text, since the signer (trusted, but not the only way to make bytes) would refuse some.
    const text = good.toString('utf8').trimEnd();
    fc.assert(
      fc.property(
        fc.oneof(
          fc.constantFrom('1e999', '-1e999', '1e308', '-0', '123456789012345678901234567890'),
          fc.integer({ min: 1, max: 200_000 }).map((d) => '['.repeat(d) + ']'.repeat(d)),
        ),
        (raw) => {
          const b = Buffer.from(`${text.slice(0, -1)},"extra":${raw}}`);
          expectParsedOrCoded(() => parseAndVerifyManifest(b, keyring));
          expectParsedOrCoded(() => parseManifestUnverified(b));
        },
      ),
      { numRuns: 60 },
    );
  });

  // Counterexamples the properties above found, kept as fixed cases.

  it('regression: a number JSON reads as Infinity (1e999) in a manifest is MANIFEST_INVALID, not a TypeError', () => {
    const b = Buffer.from(`${good.toString('utf8').trimEnd().slice(0, -1)},"extra":1e999}`);
    assert.throws(
      () => parseAndVerifyManifest(b, keyring),
      (e) => e instanceof IbuError && e.code === 'MANIFEST_INVALID',
    );
  });

  it('regression: deeply nested JSON in a manifest is MANIFEST_INVALID, not a RangeError', () => {
    const d = 100_000;
    const b = Buffer.from(`${good.toString('utf8').trimEnd().slice(0, -1)},"extra":${'['.repeat(d)}${']'.repeat(d)}}`);
    assert.throws(
      () => parseAndVerifyManifest(b, keyring),
      (e) => e instanceof IbuError && e.code === 'MANIFEST_INVALID',
    );
  });

  it('regression: a manifest whose files list has a hole verifies after signing (canonical JSON writes null, as JSON does)', () => {
    const m = sampleManifest();
    m.files = [m.files[0]!, m.files[0]!];
    delete m.files[0];
    const b = serializeManifest(signManifest(m, [key]));
    assert.equal(parseAndVerifyManifest(b, keyring).manifest.files[0], null);
  });

  it('regression: a format that is an object whose toString is not a function is MANIFEST_INVALID, not a TypeError', () => {
    const m = sampleManifest() as unknown as Record<string, unknown>;
    m.format = { toString: false };
    const b = serializeManifest(signManifest(m as unknown as ReturnType<typeof sampleManifest>, [key]));
    expectParsedOrCoded(() => parseAndVerifyManifest(b, keyring));
    assert.throws(
      () => parseAndVerifyManifest(b, keyring),
      (e) => e instanceof IbuError && e.code === 'MANIFEST_INVALID',
    );
  });
});
