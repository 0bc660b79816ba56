/**
 * The apply step's /etc merge for read-only images (issue #22): gathers the three trees (the
 * running image's defaults, the new image's defaults, the device's /etc as it is now), plans
 * (etc-merge.ts) and writes the new image's /etc overlay layer (etc-layer.ts). Runs at apply,
 * never at prepare, so an edit made in between is merged like any other.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { isIbuError } from '../errors.js';
import { Ext4Reader } from '../image/ext4/index.js';
import { planEtcMerge, type EtcDecision, type EtcRule, type EtcTree } from './etc-merge.js';
import { readEtcTree, writeEtcLayer } from './etc-layer.js';
import type { ImagesDir } from './images-dir.js';
import { READONLY_MARKER, withImageMounted, type MigrationChange } from './migration.js';

export interface EtcUpgrade {
  /** What the layer holds and every conflict, for the journal and `upgradectl apply`. */
  changed: MigrationChange[];
  conflicts: EtcDecision[];
  /** Paths of the device's entries saved under the layer's aside dir. */
  saved: string[];
  /** false: the running image was not read-only (no pristine defaults): the device's /etc was kept wherever it differs. */
  threeWay: boolean;
}

export interface EtcUpgradeInput {
  dir: ImagesDir;
  systemRoot: string;
  rules: readonly EtcRule[];
  running: string | null;
  installed: readonly string[];
  target: string;
}

const exists = (p: string): Promise<boolean> =>
  fsp.lstat(p).then(
    () => true,
    () => false,
  );

/** Is the image file built read-only (READONLY_MARKER in it)? Read without mounting, so no root is needed to ask. */
export function isReadonlyImage(image: string): boolean {
  const r = Ext4Reader.open(image);
  try {
    r.stat(`/${READONLY_MARKER}`);
    return true;
  } catch (err) {
    if (isIbuError(err, 'IMAGE_PATH_NOT_FOUND')) return false;
    throw err;
  } finally {
    r.close();
  }
}

/**
 * Writes the /etc layer of `target` (a read-only image) from the merge. Returns null when the
 * target is not a read-only image: then the configured migration rules apply, as before.
 */
export async function upgradeEtc(i: EtcUpgradeInput): Promise<EtcUpgrade | null> {
  if (!isReadonlyImage(i.dir.image(i.target))) return null;
  return withImageMounted(
    i.dir.image(i.target),
    i.dir.mount,
    async (newRoot) => {
      const next = await readEtcTree(path.join(newRoot, 'etc'));
      const device = await readEtcTree(path.join(i.systemRoot, 'etc'));
      const runningRo = i.running !== null && i.installed.includes(i.running) && (await exists(path.join(i.systemRoot, READONLY_MARKER)));
      // A running image that is not read-only has no pristine defaults (the device wrote into
      // them): taking the new defaults as the old ones keeps every file where the device differs.
      const old: EtcTree = runningRo ? await withImageMounted(i.dir.image(i.running!), i.dir.mountOld, (r) => readEtcTree(path.join(r, 'etc')), 'ro') : next;
      const plan = planEtcMerge(old, next, device, i.rules);
      const layer = i.dir.etcLayer(i.target);
      await fsp.mkdir(path.dirname(layer.upper), { recursive: true });
      await fsp.rm(layer.aside, { recursive: true, force: true });
      const saved = await writeEtcLayer(plan, device, next, { deviceEtc: path.join(i.systemRoot, 'etc'), newEtc: path.join(newRoot, 'etc'), ...layer });
      // overlayfs needs an empty work dir on the same filesystem as the upper
      await fsp.rm(layer.work, { recursive: true, force: true });
      await fsp.mkdir(layer.work);
      const shown = new Map<string, EtcDecision>();
      for (const d of [...plan.deviceLayer, ...plan.conflicts]) shown.set(d.path, d);
      const changed: MigrationChange[] = [...shown.values()].map((d) => ({
        path: `/etc/${d.path}`,
        strategy: d.conflict ? d.conflict.rule : 'three-way',
        action: d.conflict ? `conflict: took ${d.result.take}` : d.result.take === 'device' ? 'kept-device' : 'merged',
        detail: d.conflict ? d.conflict.detail : d.why,
      }));
      return { changed, conflicts: plan.conflicts, saved, threeWay: runningRo };
    },
    'ro',
  );
}
