import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import type { Manifest, ManifestZfs, ZfsStreamRef } from '../release/types.js';
import { isValidVersion } from '../version.js';
import { checkPoolHealthy, poolOf, spawnTool, zfs, zfsBin, zfsGet, zvolDevice } from './tools.js';
import { decompressFile, pump, verifyStreamFile } from './stream.js';
import { exportZvol } from './zvol.js';

const DEC = /^[0-9]{1,20}$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** The manifest's signed `zfs` field, checked for structure (the signature was checked already). */
export function manifestZfs(m: Manifest): ManifestZfs | null {
  const z = m.zfs;
  if (z === undefined) return null;
  const bad = (why: string): never => {
    throw new IbuError('MANIFEST_INVALID', `The zfs field of the manifest of ${m.version} is malformed: ${why}.`);
  };
  if (!z || typeof z !== 'object') bad('not an object');
  if (typeof z.dataset !== 'string' || !z.dataset.includes('/')) bad('dataset');
  if (typeof z.guid !== 'string' || !DEC.test(z.guid)) bad('guid');
  if (!Number.isSafeInteger(z.volsize) || z.volsize < m.image.size) bad('volsize');
  if (!Number.isSafeInteger(z.volblocksize) || z.volblocksize <= 0) bad('volblocksize');
  if (!Array.isArray(z.streams)) bad('streams');
  for (const s of z.streams) {
    if (
      !s ||
      typeof s.from !== 'string' ||
      !isValidVersion(s.from) ||
      typeof s.fromGuid !== 'string' ||
      !DEC.test(s.fromGuid) ||
      !Number.isSafeInteger(s.size) ||
      s.size <= 0 ||
      typeof s.sha256 !== 'string' ||
      !HEX64.test(s.sha256)
    )
      bad(`stream ${JSON.stringify(s)}`);
  }
  return z;
}

export function streamRef(m: Manifest, from: string): ZfsStreamRef | null {
  return manifestZfs(m)?.streams.find((s) => s.from === from) ?? null;
}

export type BaseCheck = { ok: true; guid: string } | { ok: false; reason: string };

/**
 * Whether the local dataset holds the stream's base: DATASET@from must exist with the GUID the
 * signed manifest names (a snapshot of the same name made elsewhere is not the base).
 */
export async function checkBase(dataset: string, ref: ZfsStreamRef): Promise<BaseCheck> {
  const guid = await zfsGet(`${dataset}@${ref.from}`, 'guid');
  if (guid === null) return { ok: false, reason: `${dataset}@${ref.from} does not exist` };
  if (guid !== ref.fromGuid) return { ok: false, reason: `${dataset}@${ref.from} has GUID ${guid}, not ${ref.fromGuid} as the release's snapshot` };
  return { ok: true, guid };
}

/**
 * Aborts whatever a failed `zfs recv` may have left: a resumable state (`-A`) or the snapshot
 * itself when it appeared but does not check out. The dataset's head is rolled back to the base.
 */
async function cleanupReceive(dataset: string, to: string, baseOk: boolean, from: string): Promise<void> {
  await zfs(['receive', '-A', dataset], 'aborting a partial receive').catch(() => undefined);
  if ((await zfsGet(`${dataset}@${to}`, 'guid').catch(() => null)) !== null)
    await zfs(['destroy', `${dataset}@${to}`], 'removing a bad received snapshot').catch(() => undefined);
  if (baseOk) await zfs(['rollback', `${dataset}@${from}`], 'rolling back to the base').catch(() => undefined);
}

export interface ReceiveOptions {
  /** The compressed stream (zstd) as downloaded. */
  file: string;
  manifest: Manifest;
  from: string;
  /** Local POOL/VOLUME holding the base snapshot. */
  dataset: string;
  /** The image file to write (sparse, via .partial + rename). */
  out: string;
  log?: (s: string) => void;
}

export interface ReceiveResult {
  streamBytes: number;
  seconds: { verify: number; receive: number; export: number };
  dataBytes: number;
}

/**
 * The device side of the ZFS transport: pool healthy, base present, stream verified against the
 * signed manifest (before `zfs recv` reads a byte), received, its GUID checked, then exported to
 * an image file whose sha256 must be the manifest's. Any failure leaves no partial receive state
 * and no image file; the running image and the boot state are not touched here at all.
 */
export async function receiveRelease(o: ReceiveOptions): Promise<ReceiveResult> {
  const z = manifestZfs(o.manifest);
  const to = o.manifest.version;
  if (!z) throw new IbuError('ZFS_BASE_MISSING', `Release ${to} was not published with ZFS snapshots (no zfs field in its manifest).`);
  const ref = z.streams.find((s) => s.from === o.from);
  if (!ref)
    throw new IbuError(
      'ZFS_BASE_MISSING',
      `The manifest of ${to} signs no ZFS stream from ${o.from} (it has ${z.streams.map((s) => s.from).join(', ') || 'none'}).`,
    );
  await checkPoolHealthy(poolOf(o.dataset));
  const base = await checkBase(o.dataset, ref);
  if (!base.ok) throw new IbuError('ZFS_BASE_MISSING', `Cannot receive ${o.from} -> ${to}: ${base.reason}.`);

  const t0 = performance.now();
  await verifyStreamFile(o.file, ref, z.guid, to);
  const t1 = performance.now();

  // A snapshot of the target left by an earlier, interrupted run is checked, not trusted.
  const existing = await zfsGet(`${o.dataset}@${to}`, 'guid');
  if (existing !== null && existing !== z.guid) await zfs(['destroy', `${o.dataset}@${to}`], `removing a foreign ${o.dataset}@${to}`);
  if (existing !== z.guid) {
    // -F: roll the head back to the base first (nothing but ibu writes this zvol).
    const recv = spawnTool(zfsBin(), ['receive', '-F', o.dataset], ['pipe', 'ignore', 'pipe']);
    recv.child.stdin!.on('error', () => {});
    let feedErr: unknown;
    await pump(decompressFile(o.file), recv.child.stdin!).catch((e: unknown) => {
      feedErr = e;
      recv.child.stdin!.destroy();
    });
    const r = await recv.done;
    if (r.code !== 0 || feedErr) {
      await cleanupReceive(o.dataset, to, true, o.from);
      if (/out of space|no space|ENOSPC/i.test(r.stderr)) {
        throw new IbuError(
          'ZFS_POOL_FULL',
          `zfs receive of ${o.from} -> ${to} into ${o.dataset} ran out of space in the pool '${poolOf(o.dataset)}' ` +
            `(${r.stderr.trim()}). Nothing was kept; destroy old snapshots or grow the pool.`,
        );
      }
      // A receive that failed on damaged pool data reports the pool, not a generic failure.
      await checkPoolHealthy(poolOf(o.dataset));
      throw new IbuError(
        'ZFS_FAILED',
        `zfs receive of ${o.from} -> ${to} into ${o.dataset} failed (exit ${r.code}): ${r.stderr.trim() || String(feedErr)}. Nothing was kept.`,
      );
    }
    const got = await zfsGet(`${o.dataset}@${to}`, 'guid');
    if (got !== z.guid) {
      await cleanupReceive(o.dataset, to, true, o.from);
      throw new IbuError('ZFS_STREAM_INVALID', `After zfs receive, ${o.dataset}@${to} has GUID ${String(got)}, not ${z.guid}; it was destroyed.`);
    }
  }
  const t2 = performance.now();
  // The head now equals @to (nothing else writes the zvol); a scrub error found meanwhile stops us.
  await checkPoolHealthy(poolOf(o.dataset));
  const dev = await zvolDevice(o.dataset);
  const ex = await exportZvol(dev, o.manifest.image.size, o.out);
  if (ex.sha256 !== o.manifest.image.sha256) {
    await fsp.rm(o.out, { force: true });
    throw new IbuError(
      'IMAGE_HASH_MISMATCH',
      `The image exported from ${o.dataset}@${to} has sha256 ${ex.sha256}, not ${o.manifest.image.sha256} as signed; ` +
        `it was deleted. Check the pool with 'zpool scrub'.`,
    );
  }
  return {
    streamBytes: ref.size,
    seconds: { verify: (t1 - t0) / 1000, receive: (t2 - t1) / 1000, export: (performance.now() - t2) / 1000 },
    dataBytes: ex.dataBytes,
  };
}
