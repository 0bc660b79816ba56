import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import { compareVersions } from '../version.js';

/** An image file on the host partition; `allocated` is what deleting it frees (st_blocks × 512). */
export interface ImageFile {
  version: string;
  kind: 'image' | 'partial';
  allocated: number;
}

export interface SpaceInput {
  /** statfs: blocks available to us × block size. */
  freeBytes: number;
  /** Bytes the target download still has to allocate (exact, from the manifest and the partial so far). */
  neededBytes: number;
  /** The target image's allocated size, the unit of the "2.5 images" rule. */
  imageBytes: number;
  reserveBytes: number;
  /** Images worth of space the policy aims for (default 2.5: running, new, and half an image of headroom). */
  keepImages: number;
  files: ImageFile[];
  /** Never deleted: the running image, the committed default, a pending trial, the target. */
  protect: string[];
}

export interface CleanupPlan {
  remove: ImageFile[];
  required: number;
  desired: number;
  freeAfter: number;
  ok: boolean;
  shortBy: number;
}

/**
 * Which files to delete so the download fits. Mandatory: free ≥ needed + reserve. Best effort:
 * free ≥ needed + reserve + (keepImages − 2) × image, so after the download there is still room
 * for the ".5" (an image's growth, a delta file). Other versions' partial downloads go first, then
 * complete images, oldest version first. Protected versions are never touched, and nothing is
 * deleted beyond what the best-effort target needs, so older images stay for rollbacks.
 */
export function planCleanup(s: SpaceInput): CleanupPlan {
  const required = s.neededBytes + s.reserveBytes;
  const desired = required + Math.max(0, s.keepImages - 2) * s.imageBytes;
  const protect = new Set(s.protect);
  const candidates = s.files
    .filter((f) => !protect.has(f.version))
    .sort((a, b) => (a.kind !== b.kind ? (a.kind === 'partial' ? -1 : 1) : compareVersions(a.version, b.version)));
  const remove: ImageFile[] = [];
  let free = s.freeBytes;
  for (const f of candidates) {
    if (free >= desired) break;
    remove.push(f);
    free += f.allocated;
  }
  // Deleting for the best-effort target alone is fine, but never when it cannot even reach "required".
  if (free < required) return { remove: [], required, desired, freeAfter: s.freeBytes, ok: false, shortBy: required - free };
  return { remove, required, desired, freeAfter: free, ok: true, shortBy: 0 };
}

/**
 * Bytes a sparse image file occupies once written: the filesystem blocks its non-zero chunks
 * touch (zero runs stay holes). Chunks are sorted and contiguous, so a block shared by two
 * chunks is counted once.
 */
export function bytesToAllocate(chunks: ReadonlyArray<{ offset: number; size: number; zero?: true }>, blockSize: number): number {
  let blocks = 0;
  let lastEnd = -1; // exclusive end block of the previous counted range
  for (const c of chunks) {
    if (c.zero) continue;
    const b0 = Math.floor(c.offset / blockSize);
    const b1 = Math.ceil((c.offset + c.size) / blockSize);
    blocks += b1 - Math.max(b0, lastEnd);
    lastEnd = b1;
  }
  return blocks * blockSize;
}

/**
 * Free bytes a writer can use: bavail. Even as root, bfree overstates it: ext4 also holds back
 * s_resv_clusters (about 2 % of small filesystems) that no user can allocate.
 */
export async function freeBytes(dir: string): Promise<number> {
  const st = await fsp.statfs(dir);
  return Number(st.bavail) * Number(st.bsize);
}

export function noSpaceError(plan: CleanupPlan, dir: string, target: string): IbuError {
  const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;
  return new IbuError(
    'NO_SPACE',
    `Not enough space in ${dir} for ${target}: ${mib(plan.shortBy)} short of the ${mib(plan.required)} needed ` +
      'even after deleting every image the policy may delete (the running image, the committed default and a pending trial are kept). ' +
      'Free space on the host partition or lower space.reserveBytes.',
    {
      details: { required: plan.required, shortBy: plan.shortBy },
    },
  );
}
