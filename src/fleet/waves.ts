import { createHash } from 'node:crypto';
import type { RolloutSpec } from './types.js';

/** Buckets are hundredths of a percent, so a 0.5% wave is expressible. */
export const BUCKETS = 10_000;

/**
 * A device's stable position in every rollout: the first 4 bytes of sha256(id) mod 10,000.
 * Stable across restarts and servers, uniform over ids, so "10%" means buckets 0..999.
 */
export function deviceBucket(deviceId: string): number {
  return createHash('sha256').update(deviceId).digest().readUInt32BE(0) % BUCKETS;
}

export interface Wave {
  /** Devices with bucket below this are in the wave (cumulative). */
  bucketBelow: number;
  /** Groups always in the wave (the canaries, carried into every later wave). */
  groups: string[];
  label: string;
}

/** The spec's waves as the rollout walks them: a canary wave first when canary groups exist. */
export function effectiveWaves(spec: RolloutSpec): Wave[] {
  const waves: Wave[] = [];
  if (spec.canaryGroups.length > 0) waves.push({ bucketBelow: 0, groups: spec.canaryGroups, label: `canary (${spec.canaryGroups.join(', ')})` });
  for (const p of spec.waves) {
    waves.push({ bucketBelow: Math.round((p / 100) * BUCKETS), groups: spec.canaryGroups, label: `${p}%` });
  }
  return waves;
}

export function inWave(wave: Wave, bucket: number, group: string): boolean {
  return bucket < wave.bucketBelow || wave.groups.includes(group);
}

/** The first wave (index) that contains the device, or -1 when none does. */
export function waveOf(waves: readonly Wave[], bucket: number, group: string): number {
  for (let i = 0; i < waves.length; i++) if (inWave(waves[i]!, bucket, group)) return i;
  return -1;
}
