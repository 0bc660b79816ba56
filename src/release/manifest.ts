import { Compressor } from 'zstd-napi';
import { decompressCapped, OverCap, zstdBinding } from '../chunk/compress.js';
import { IbuError, isIbuError } from '../errors.js';
import { manifestPath, manifestZstPath } from '../store/layout.js';
import type { Store, WriteStore } from '../store/store.js';
import { CHUNK_HASHES } from '../chunk/hash.js';
import { canonicalJson } from './canonical-json.js';
import type { Keyring } from './keyring.js';
import { signBytes, type SigningKey } from './keys.js';
import type { Manifest } from './types.js';
import { isValidVersion } from '../version.js';

/** The id written for all-zero runs (they are not stored, so they need no real hash). */
export const ZERO_CHUNK_ID = '0'.repeat(64);

/** The signed bytes: canonical JSON of the manifest without `signatures`. */
export function manifestPayload(m: Manifest): Buffer {
  const { signatures: _sigs, ...rest } = m;
  return Buffer.from(canonicalJson(rest), 'utf8');
}

/** Adds (or replaces) the signature of each key. Existing signatures by other keys are kept (rotation). */
export function signManifest(m: Manifest, keys: readonly SigningKey[]): Manifest {
  const payload = manifestPayload(m);
  const sigs = (m.signatures ?? []).filter((s) => !keys.some((k) => k.keyId === s.keyId));
  for (const k of keys) sigs.push({ keyId: k.keyId, sig: signBytes(k, payload) });
  return { ...m, signatures: sigs };
}

export function serializeManifest(m: Manifest): Buffer {
  return Buffer.from(JSON.stringify(m) + '\n', 'utf8');
}

/** Largest manifest accepted (a 2 GiB image at 16 KiB chunks makes ~6 MiB). */
export const MAX_MANIFEST_BYTES = 256 * 1024 * 1024;

/**
 * Writes `manifest.json.zst` then `manifest.json` (the plain file is the one that makes the
 * release exist, so it comes last). Both are replaced atomically.
 */
export async function writeManifest(store: WriteStore, m: Manifest): Promise<{ bytes: number; zstBytes: number }> {
  const plain = serializeManifest(m);
  const c = new Compressor();
  c.setParameters({ compressionLevel: 19, contentSizeFlag: true, checksumFlag: true });
  const z = c.compress(plain);
  await store.putFile(manifestZstPath(m.version), z);
  await store.putFile(manifestPath(m.version), plain);
  return { bytes: plain.length, zstBytes: z.length };
}

/**
 * The manifest bytes of a release: `manifest.json.zst` when the store has it (a third of the
 * download), else `manifest.json`. Returns the plain bytes and how many bytes were transferred.
 */
export async function readManifestBytes(store: Store, version: string, signal?: AbortSignal): Promise<{ bytes: Buffer; transferred: number }> {
  const api = (store as { layout?: string }).layout === 'api';
  if (!api) {
    try {
      const z = await store.getFile(manifestZstPath(version), signal);
      let plain: Buffer;
      try {
        plain = decompressCapped(new zstdBinding.DCtx(), z, MAX_MANIFEST_BYTES);
      } catch (err) {
        if (err instanceof OverCap) throw new IbuError('MANIFEST_INVALID', `the manifest of ${version} is larger than ${MAX_MANIFEST_BYTES} bytes`);
        throw new IbuError(
          'MANIFEST_INVALID',
          `${manifestZstPath(version)} in ${store.location} is not a valid zstd frame (${(err as Error).message}); the store copy is damaged`,
          { cause: err },
        );
      }
      if (plain.length > MAX_MANIFEST_BYTES) throw new IbuError('MANIFEST_INVALID', `the manifest of ${version} is larger than ${MAX_MANIFEST_BYTES} bytes`);
      return { bytes: plain, transferred: z.length };
    } catch (err) {
      if (!isIbuError(err, 'NOT_FOUND')) throw err;
    }
  }
  try {
    const b = Buffer.from(await store.getFile(manifestPath(version), signal));
    return { bytes: b, transferred: b.length };
  } catch (err) {
    if (isIbuError(err, 'NOT_FOUND'))
      throw new IbuError('RELEASE_NOT_FOUND', `release ${version} is not in ${store.location} (no ${manifestPath(version)}); check the version and the store`, {
        cause: err,
      });
    throw err;
  }
}

/**
 * Parses stored manifest bytes, checks the signatures against the keyring before looking at
 * anything else, then checks the structure. Throws MANIFEST_INVALID, SIGNATURE_INVALID,
 * KEY_UNKNOWN or KEY_REVOKED.
 */
export function parseAndVerifyManifest(bytes: Uint8Array, keyring: Keyring, what = 'the manifest'): { manifest: Manifest; keyId: string } {
  const raw = parseJson(bytes, what);
  const sigs = (raw as { signatures?: unknown }).signatures;
  if (!Array.isArray(sigs) || !sigs.every((s) => s && typeof s === 'object' && typeof s.keyId === 'string' && typeof s.sig === 'string')) {
    throw new IbuError(
      'SIGNATURE_INVALID',
      `${what} has no valid 'signatures' list; it must be signed with \`ibu release publish --key\` or \`ibu release sign\``,
    );
  }
  const { keyId } = keyring.verify(manifestPayload(raw as unknown as Manifest), sigs, what);
  return { manifest: validateManifest(raw, what), keyId };
}

export function parseManifestUnverified(bytes: Uint8Array, what = 'the manifest'): Manifest {
  return validateManifest(parseJson(bytes, what), what);
}

function parseJson(bytes: Uint8Array, what: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new IbuError('MANIFEST_INVALID', `${what} is not JSON (${(err as Error).message}); the store copy is damaged`, { cause: err });
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new IbuError('MANIFEST_INVALID', `${what} is not a JSON object`);
  const problem = jsonProblem(raw);
  if (problem) throw new IbuError('MANIFEST_INVALID', `${what} holds ${problem}; the store copy is damaged or was not written by ibu`);
  return raw as Record<string, unknown>;
}

/** Deeper than any manifest field needs (files[].extents[][] is four levels down). */
const MAX_JSON_DEPTH = 64;

/**
 * What canonical JSON (recursive, and the signature check runs it before anything else) cannot
 * take: nesting past MAX_JSON_DEPTH, which would overflow the stack, or a number JSON.parse
 * read as Infinity (1e999). Walks with its own stack, so hostile nesting cannot overflow it.
 */
function jsonProblem(root: unknown): string | null {
  const stack: Array<[unknown, number]> = [[root, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (typeof v === 'number' && !Number.isFinite(v)) return 'a number out of range';
    if (v === null || typeof v !== 'object') continue;
    if (depth >= MAX_JSON_DEPTH) return `values nested deeper than ${MAX_JSON_DEPTH} levels`;
    for (const x of Object.values(v)) stack.push([x, depth + 1]);
  }
  return null;
}

const HEX64 = /^[0-9a-f]{64}$/;
const isInt = (n: unknown, min = 0): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= min;

/** Structural checks: everything fetch relies on (chunks tile the image exactly, sizes in range). */
export function validateManifest(raw: Record<string, unknown>, what = 'the manifest'): Manifest {
  const bad = (why: string): never => {
    throw new IbuError('MANIFEST_INVALID', `${what} is malformed: ${why}`);
  };
  const m = raw as unknown as Manifest;
  if (m.format !== 1) bad(`format ${shown(m.format)} is not supported by this ibu (knows format 1); upgrade ibu`);
  if (typeof m.version !== 'string' || !isValidVersion(m.version)) bad(`invalid version ${JSON.stringify(m.version)}`);
  if (typeof m.channel !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(m.channel)) bad('invalid channel');
  if (typeof m.createdAt !== 'string') bad('createdAt is missing');
  if (!m.image || !isInt(m.image.size) || typeof m.image.sha256 !== 'string' || !HEX64.test(m.image.sha256) || !isInt(m.image.blockSize, 1))
    bad('image {size, sha256, blockSize} is invalid');
  const c = m.chunking;
  if (!c || c.algorithm !== 'fastcdc' || !isInt(c.min, 1) || !isInt(c.avg, 1) || !isInt(c.max, 1) || c.compression !== 'zstd')
    bad('chunking parameters are invalid');
  if (!(CHUNK_HASHES as readonly string[]).includes(c.hash)) bad(`unknown chunk hash '${shown(c.hash)}'`);
  if (!Array.isArray(m.chunks)) bad('chunks is not a list');
  let off = 0;
  for (let i = 0; i < m.chunks.length; i++) {
    const r = m.chunks[i]!;
    if (!r || typeof r !== 'object' || typeof r.id !== 'string' || !HEX64.test(r.id)) bad(`chunk ${i} has no valid id`);
    if (r.offset !== off) bad(`chunk ${i} starts at ${shown(r.offset)}, expected ${off} (chunks must tile the image)`);
    if (!isInt(r.size, 1)) bad(`chunk ${i} has an invalid size`);
    if (r.zero !== undefined && r.zero !== true) bad(`chunk ${i} has an invalid zero flag`);
    if (!r.zero && r.size > c.max) bad(`chunk ${i} is larger than the maximum chunk size`);
    if (r.csize !== undefined && !isInt(r.csize, 1)) bad(`chunk ${i} has an invalid csize`);
    off += r.size;
  }
  if (off !== m.image.size) bad(`chunks cover ${off} bytes but the image has ${m.image.size}`);
  if (!Array.isArray(m.files)) bad('files is not a list');
  if (typeof m.kernel !== 'string' || typeof m.initrd !== 'string') bad('kernel and initrd must be strings');
  if (m.verity !== undefined) {
    // these values end up in the boot environment a shell script reads: strict forms only
    const v = m.verity;
    if (
      !v ||
      typeof v !== 'object' ||
      v.format !== 1 ||
      v.hashAlgorithm !== 'sha256' ||
      !isInt(v.dataBlockSize, 512) ||
      !isInt(v.hashBlockSize, 512) ||
      !isInt(v.dataBlocks, 1) ||
      !isInt(v.treeBytes, 1) ||
      v.hashOffset !== v.dataBlocks * v.dataBlockSize ||
      v.hashOffset + v.treeBytes !== m.image.size ||
      typeof v.rootHash !== 'string' ||
      !HEX64.test(v.rootHash) ||
      typeof v.salt !== 'string' ||
      !/^[0-9a-f]{2,512}$/.test(v.salt)
    )
      bad('verity {format, hashAlgorithm, block sizes, dataBlocks, hashOffset, treeBytes, salt, rootHash} is invalid or does not match the image size');
  }
  return m;
}

/** A value from an untrusted manifest, for a message: JSON, never its own toString (which may be anything, or throw). */
function shown(v: unknown): string {
  try {
    return (JSON.stringify(v) ?? typeof v).slice(0, 100);
  } catch {
    return typeof v;
  }
}
