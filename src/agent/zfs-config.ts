/**
 * The transport part of the agent config (docs/zfs.md): `"transport": "ibu"` (default: ibu deltas,
 * then chunks) or `"zfs"` with `"zfs": { "dataset": "POOL/VOLUME" }`: incremental `zfs send`
 * streams received into a local pool, then exported to the image file GRUB boots.
 */
export type Transport = 'ibu' | 'zfs';

export interface ZfsAgentConfig {
  /** Local POOL/VOLUME that holds the releases as snapshots named after their versions. */
  dataset: string;
  /**
   * A stream that fails verification or `zfs recv` (wrong base, truncated, tampered, pool full or
   * damaged) is logged and the release fetched as chunks instead (default). `false` stops with
   * the error code, for operators who want to see it (and for the tests).
   */
  fallbackToChunks: boolean;
  /** How long to wait for a stream the server is still building (default: download.deltaWaitSeconds). */
  waitSeconds: number | null;
}

const DATASET = /^[A-Za-z][A-Za-z0-9_.:-]*(\/[A-Za-z0-9_.:-]+)+$/;

export function parseTransport(raw: Record<string, unknown>, problem: (msg: string) => void): { transport: Transport; zfs: ZfsAgentConfig | null } {
  const t = raw.transport ?? 'ibu';
  if (t !== 'ibu' && t !== 'zfs') problem(`transport must be 'ibu' (ibu deltas and chunks) or 'zfs' (zfs send streams), got ${JSON.stringify(t)}`);
  const z = raw.zfs;
  if (z === undefined || z === null) {
    if (t === 'zfs') problem(`transport 'zfs' needs "zfs": { "dataset": "POOL/VOLUME" } (the local zvol that holds the release snapshots)`);
    return { transport: t === 'zfs' ? 'zfs' : 'ibu', zfs: null };
  }
  if (typeof z !== 'object' || Array.isArray(z)) {
    problem('zfs must be an object { "dataset": "POOL/VOLUME", "fallbackToChunks": true }');
    return { transport: 'ibu', zfs: null };
  }
  const zz = z as Record<string, unknown>;
  for (const k of Object.keys(zz))
    if (!['dataset', 'fallbackToChunks', 'waitSeconds'].includes(k)) problem(`unknown key 'zfs.${k}' (known: dataset, fallbackToChunks, waitSeconds)`);
  const dataset = zz.dataset;
  if (typeof dataset !== 'string' || !DATASET.test(dataset))
    problem(`zfs.dataset must be a zvol name like POOL/VOLUME (no '@'), got ${JSON.stringify(dataset)}`);
  if (zz.fallbackToChunks !== undefined && typeof zz.fallbackToChunks !== 'boolean') problem('zfs.fallbackToChunks must be true or false');
  const w = zz.waitSeconds;
  if (w !== undefined && (typeof w !== 'number' || !Number.isFinite(w) || w < 0)) problem('zfs.waitSeconds must be a number >= 0');
  return {
    transport: t === 'zfs' ? 'zfs' : 'ibu',
    zfs: { dataset: String(dataset), fallbackToChunks: zz.fallbackToChunks !== false, waitSeconds: typeof w === 'number' ? w : null },
  };
}
