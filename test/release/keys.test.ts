import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { isIbuError } from '../../src/errors.js';
import { canonicalJson } from '../../src/release/canonical-json.js';
import { generateKeys, keyIdOf, loadSigningKey } from '../../src/release/keys.js';
import { Keyring } from '../../src/release/keyring.js';
import { manifestPayload, parseAndVerifyManifest, serializeManifest, signManifest } from '../../src/release/manifest.js';
import type { Manifest } from '../../src/release/types.js';
import { tmpDir } from './helpers.js';

function sampleManifest(): Manifest {
  const data = Buffer.from('x'.repeat(10000));
  return {
    format: 1,
    version: '2026.11.1',
    channel: 'stable',
    createdAt: '2026-11-26T00:00:00.000Z',
    image: { size: 10000 + 65536, sha256: createHash('sha256').update(data).digest('hex'), blockSize: 4096 },
    chunking: { algorithm: 'fastcdc', min: 16384, avg: 65536, max: 262144, hash: 'blake3', compression: 'zstd' },
    chunks: [
      { id: 'a'.repeat(64), offset: 0, size: 10000 },
      { id: '0'.repeat(64), offset: 10000, size: 65536, zero: true },
    ],
    files: [{ path: '/', type: 'dir', size: 4096 }],
    kernel: '/boot/vmlinuz',
    initrd: '/boot/initrd.img',
    signatures: [],
  };
}

async function setup() {
  const t = tmpDir('keys');
  const k1 = await generateKeys(path.join(t.dir, 'k1'));
  const k2 = await generateKeys(path.join(t.dir, 'k2'));
  const k3 = await generateKeys(path.join(t.dir, 'k3'));
  const ring = path.join(t.dir, 'ring');
  mkdirSync(ring);
  copyFileSync(k1.publicKeyPath, path.join(ring, 'k1.pub'));
  copyFileSync(k2.publicKeyPath, path.join(ring, 'k2.pub'));
  return { ...t, k1, k2, k3, ring };
}

test('keys generate writes a 0600 PKCS#8 private key and an SPKI public key; the id is sha256(raw pub)[0:16]', async () => {
  const s = await setup();
  try {
    assert.equal(statSync(s.k1.privateKeyPath).mode & 0o777, 0o600);
    assert.match(readFileSync(s.k1.privateKeyPath, 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
    assert.match(readFileSync(s.k1.publicKeyPath, 'utf8'), /^-----BEGIN PUBLIC KEY-----/);
    const key = await loadSigningKey(s.k1.privateKeyPath);
    const raw = (key.publicKey.export({ format: 'der', type: 'spki' }) as Buffer).subarray(-32);
    assert.equal(key.keyId, createHash('sha256').update(raw).digest('hex').slice(0, 16));
    assert.equal(keyIdOf(key.publicKey), s.k1.keyId);
    await assert.rejects(generateKeys(path.join(s.dir, 'k1')), (e) => isIbuError(e, 'CONFLICT'));
    writeFileSync(path.join(s.dir, 'junk.key'), 'not a key');
    await assert.rejects(loadSigningKey(path.join(s.dir, 'junk.key')), (e) => isIbuError(e, 'KEY_INVALID'));
  } finally {
    s.cleanup();
  }
});

test('canonical JSON sorts keys at every level and has no whitespace', () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: 'é' }], c: null }, u: undefined }), '{"a":{"c":null,"d":[1,{"y":"é","z":1}]},"b":1}');
  const m = sampleManifest();
  const reordered = Object.fromEntries(Object.entries(m).reverse()) as unknown as Manifest;
  assert.deepEqual(manifestPayload(m), manifestPayload(reordered));
});

test('a manifest signed by a trusted key verifies; tampering with it or its signature is SIGNATURE_INVALID', async () => {
  const s = await setup();
  try {
    const ring = await Keyring.load(s.ring);
    const signed = signManifest(sampleManifest(), [await loadSigningKey(s.k1.privateKeyPath)]);
    const bytes = serializeManifest(signed);
    assert.equal(parseAndVerifyManifest(bytes, ring).keyId, s.k1.keyId);

    const tampered = { ...signed, image: { ...signed.image, size: signed.image.size + 1 } };
    assert.throws(
      () => parseAndVerifyManifest(serializeManifest(tampered), ring),
      (e) => isIbuError(e, 'SIGNATURE_INVALID'),
    );

    const sig = Buffer.from(signed.signatures[0]!.sig, 'base64');
    sig[10]! ^= 1;
    const badSig = { ...signed, signatures: [{ keyId: s.k1.keyId, sig: sig.toString('base64') }] };
    assert.throws(
      () => parseAndVerifyManifest(serializeManifest(badSig), ring),
      (e) => isIbuError(e, 'SIGNATURE_INVALID'),
    );

    assert.throws(
      () => parseAndVerifyManifest(serializeManifest({ ...signed, signatures: [] }), ring),
      (e) => isIbuError(e, 'SIGNATURE_INVALID'),
    );
    assert.throws(
      () => parseAndVerifyManifest(Buffer.from('{not json'), ring),
      (e) => isIbuError(e, 'MANIFEST_INVALID'),
    );
  } finally {
    s.cleanup();
  }
});

test('a manifest signed only by a key outside the keyring is KEY_UNKNOWN', async () => {
  const s = await setup();
  try {
    const signed = signManifest(sampleManifest(), [await loadSigningKey(s.k3.privateKeyPath)]);
    const ring = await Keyring.load(s.ring);
    assert.throws(
      () => parseAndVerifyManifest(serializeManifest(signed), ring),
      (e) => isIbuError(e, 'KEY_UNKNOWN'),
    );
  } finally {
    s.cleanup();
  }
});

test('rotation: a manifest carries several signatures; revoking the old key takes effect at once', async () => {
  const s = await setup();
  try {
    const old = await loadSigningKey(s.k1.privateKeyPath);
    const next = await loadSigningKey(s.k2.privateKeyPath);
    const byOld = signManifest(sampleManifest(), [old]);
    const byBoth = signManifest(byOld, [next]); // `ibu release sign` adds the new key's signature
    assert.deepEqual(
      byBoth.signatures.map((x) => x.keyId),
      [s.k1.keyId, s.k2.keyId],
    );

    writeFileSync(path.join(s.ring, 'revoked'), `# rotated out\n${s.k1.keyId}\n`);
    const ring = await Keyring.load(s.ring);
    // Signed by the old key only: refused as revoked, even though its .pub is still in the keyring.
    assert.throws(
      () => parseAndVerifyManifest(serializeManifest(byOld), ring),
      (e) => isIbuError(e, 'KEY_REVOKED'),
    );
    // Signed by both: the new key carries it.
    assert.equal(parseAndVerifyManifest(serializeManifest(byBoth), ring).keyId, s.k2.keyId);
  } finally {
    s.cleanup();
  }
});

test('a bad revoked list or an empty keyring is CONFIG_INVALID', async () => {
  const s = await setup();
  try {
    writeFileSync(path.join(s.ring, 'revoked'), 'nonsense\n');
    await assert.rejects(Keyring.load(s.ring), (e) => isIbuError(e, 'CONFIG_INVALID'));
    const empty = path.join(s.dir, 'empty');
    mkdirSync(empty);
    await assert.rejects(Keyring.load(empty), (e) => isIbuError(e, 'CONFIG_INVALID'));
  } finally {
    s.cleanup();
  }
});
