import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { TryClearedBy } from './bootloader.js';

/**
 * Can GRUB write an env block in this directory? GRUB's save_env writes through the file's block
 * list on the raw disk, so it refuses (or corrupts) anything that is not a plain partition
 * holding a filesystem with stable block lists: md RAID and device-mapper (LVM, dm-crypt) are
 * "diskfilter" devices GRUB will not write, ZFS and btrfs do not expose writable block lists,
 * and network or memory filesystems are not on a disk GRUB sees at all.
 */
export interface EnvWritability {
  writable: boolean;
  reason: string;
  fsType: string;
  device: string; // major:minor
  mountPoint: string;
}

export interface MountInfo {
  mountPoint: string;
  majorMinor: string;
  fsType: string;
  source: string;
}

/** Parses /proc/self/mountinfo (see proc(5)). Octal escapes such as \040 in paths are decoded. */
export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 6 || f.length < dash + 3) continue;
    out.push({ majorMinor: f[2]!, mountPoint: unescapeMount(f[4]!), fsType: f[dash + 1]!, source: unescapeMount(f[dash + 2]!) });
  }
  return out;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The mount holding `file` (the last, longest matching mount point wins, as the kernel stacks them). */
export function mountFor(mounts: MountInfo[], file: string): MountInfo | null {
  let best: MountInfo | null = null;
  for (const m of mounts) {
    const mp = m.mountPoint;
    const inside = file === mp || mp === '/' || file.startsWith(mp.endsWith('/') ? mp : mp + '/');
    if (inside && (best === null || mp.length >= best.mountPoint.length)) best = m;
  }
  return best;
}

const GRUB_WRITABLE_FS = new Set(['ext2', 'ext3', 'ext4', 'vfat', 'msdos', 'xfs']);

export interface DetectOptions {
  /** Defaults to /proc/self/mountinfo; tests pass their own text. */
  mountInfoText?: string;
  /** Root of sysfs, default /sys; tests pass a generated tree. */
  sysRoot?: string;
}

/** Decides from mountinfo and sysfs whether GRUB can write an env block in `dir`. */
export async function detectEnvWritability(dir: string, opts: DetectOptions = {}): Promise<EnvWritability> {
  const real = await fsp.realpath(dir).catch(() => path.resolve(dir));
  const text = opts.mountInfoText ?? (await fsp.readFile('/proc/self/mountinfo', 'utf8'));
  const m = mountFor(parseMountInfo(text), real);
  if (!m) return { writable: false, reason: `no mount found for ${real}`, fsType: '?', device: '?', mountPoint: '?' };
  const base = { fsType: m.fsType, device: m.majorMinor, mountPoint: m.mountPoint };
  if (m.fsType === 'zfs') return { writable: false, reason: `${m.mountPoint} is on ZFS: GRUB cannot write an environment block there`, ...base };
  if (m.fsType === 'btrfs') return { writable: false, reason: `${m.mountPoint} is on btrfs: GRUB's save_env cannot write into btrfs files`, ...base };
  if (!GRUB_WRITABLE_FS.has(m.fsType))
    return { writable: false, reason: `${m.mountPoint} is ${m.fsType}, ` + 'not a filesystem GRUB writes (ext2/3/4, vfat, xfs)', ...base };
  const stack = await blockStack(opts.sysRoot ?? '/sys', m.majorMinor);
  if (stack.md) return { writable: false, reason: `${m.mountPoint} is on md RAID (${stack.md}): GRUB does not write to RAID arrays`, ...base };
  if (stack.dm)
    return { writable: false, reason: `${m.mountPoint} is on device-mapper (${stack.dm}, ` + 'e.g. LVM or dm-crypt): GRUB does not write to it', ...base };
  return { writable: true, reason: `${m.mountPoint} is ${m.fsType} on a plain block device (${m.majorMinor})`, ...base };
}

/** Looks at /sys/dev/block/M:m (and its parent disk for a partition) for md or dm attributes. */
async function blockStack(sysRoot: string, majorMinor: string): Promise<{ md?: string; dm?: string }> {
  const link = path.join(sysRoot, 'dev', 'block', majorMinor);
  let dev: string;
  try {
    dev = await fsp.realpath(link);
  } catch {
    return {}; // no sysfs entry: a virtual device (e.g. 0:xx), already filtered by fs type
  }
  const candidates = [dev];
  if (await exists(path.join(dev, 'partition'))) candidates.push(path.dirname(dev));
  for (const d of candidates) {
    if (await exists(path.join(d, 'md'))) return { md: path.basename(d) };
    if (await exists(path.join(d, 'dm'))) {
      const name = await fsp.readFile(path.join(d, 'dm', 'name'), 'utf8').catch(() => path.basename(d));
      return { dm: name.trim() };
    }
  }
  return {};
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

export interface EnvLocationConfig {
  /** Host partition mount point; the default env lives in `<hostMount>/boot/grub`. */
  hostMount: string;
  /** Explicit env directory (skips detection). */
  envDir?: string;
  /** An EFI system partition directory to hold the env when the host partition is not writable by GRUB. */
  espEnvDir?: string;
  tryClearedBy?: TryClearedBy;
}

export interface EnvLocation {
  dir: string;
  tryClearedBy: TryClearedBy;
  reason: string;
}

/**
 * Where the env lives and who clears try_image:
 *  1. an explicit `envDir` from config;
 *  2. `<hostMount>/boot/grub` when GRUB can write it (the normal case);
 *  3. the ESP directory when configured and GRUB can write that (vfat on a plain partition);
 *  4. otherwise `<hostMount>/boot/grub` with try_image cleared by the initramfs (GRUB only reads).
 */
export async function resolveEnvLocation(cfg: EnvLocationConfig, opts: DetectOptions = {}): Promise<EnvLocation> {
  if (cfg.envDir) return { dir: cfg.envDir, tryClearedBy: cfg.tryClearedBy ?? 'grub', reason: 'envDir set in config' };
  const hostDir = path.join(cfg.hostMount, 'boot', 'grub');
  const host = await detectEnvWritability(hostDir, opts);
  if (host.writable) return { dir: hostDir, tryClearedBy: cfg.tryClearedBy ?? 'grub', reason: host.reason };
  if (cfg.espEnvDir) {
    const esp = await detectEnvWritability(cfg.espEnvDir, opts);
    if (esp.writable) return { dir: cfg.espEnvDir, tryClearedBy: 'grub', reason: `${host.reason}; using the ESP instead (${esp.reason})` };
  }
  return { dir: hostDir, tryClearedBy: 'initramfs', reason: `${host.reason}; GRUB only reads the env and the initramfs clears try_image` };
}
