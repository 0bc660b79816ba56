import { compareVersions } from '../version.js';
import type { ReleaseRecord } from './types.js';

/**
 * The single upgrade path of a channel: releases in version order, where a mandatory release is
 * a stepping stone nobody may jump over. From `current` the next hop is the highest release the
 * device may have (`offered`) that does not skip the first mandatory release above `current`.
 * Never lower than `current` (anti-downgrade). Pure: the caller decides what is offered.
 */
export function nextHop(releases: readonly ReleaseRecord[], current: string, offered: (r: ReleaseRecord) => boolean): ReleaseRecord | null {
  const above = releases.filter((r) => compareVersions(r.version, current) > 0).sort((a, b) => compareVersions(a.version, b.version));
  let best: ReleaseRecord | null = null;
  for (const r of above) {
    if (offered(r)) best = r;
    if (r.mandatory) break; // the stepping stone itself may be the target, nothing past it
  }
  return best;
}

/** Releases of one channel sorted by version, lowest first. */
export function sortReleases(releases: readonly ReleaseRecord[]): ReleaseRecord[] {
  return [...releases].sort((a, b) => compareVersions(a.version, b.version));
}
