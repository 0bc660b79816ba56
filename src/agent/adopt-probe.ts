import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { detectEnvWritability, mountFor, parseMountInfo } from '../boot/env-location.js';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';
import type { AdoptFacts } from './adopt-preflight.js';
import { freeBytes } from './disk-policy.js';

export interface ProbeInput {
  /** The conventional system's root (its /etc, /var/lib/dpkg). */
  systemRoot: string;
  /** The root filesystem alone (no other mounts on top): where images/ and boot/ibu go. */
  host: string;
  neededBytes: number;
  imageBytes: number;
  reserveBytes: number;
  keepImages: number;
  /** Root of sysfs (default /sys). */
  sysRoot?: string;
}

/** The thin part of the preflight: reads what the machine is (firmware, GRUB, filesystems, space); changes nothing. */
export async function probeAdoptFacts(i: ProbeInput): Promise<AdoptFacts> {
  const sys = i.sysRoot ?? '/sys';
  const firmware = (await exists(path.join(sys, 'firmware/efi'))) ? 'uefi' : 'bios';
  const grub = await installedGrubPackages(i.systemRoot);
  const grubPackages = grub.map((g) => g.name);
  const grubVersion = grub[0]?.version ?? null;
  const mounts = parseMountInfo(await fsp.readFile('/proc/self/mountinfo', 'utf8'));
  const hostReal = await fsp.realpath(i.host);
  const rootMount = mountFor(mounts, hostReal);
  if (!rootMount) throw new IbuError('IO_ERROR', `no mount holds ${hostReal}`);
  const env = await detectEnvWritability(hostReal, { sysRoot: sys });
  const sysRootReal = await fsp.realpath(i.systemRoot);
  const bootMount = mountFor(mounts, path.join(sysRootReal, 'boot'));
  const separate = !!bootMount && bootMount.mountPoint !== mountFor(mounts, sysRootReal)?.mountPoint;
  const cleanable: AdoptFacts['cleanable'] = [];
  for (const [what, p] of [
    ['downloaded packages in /var/cache/apt/archives (apt-get clean)', 'var/cache/apt/archives'],
    ['the systemd journal in /var/log/journal (journalctl --vacuum-size)', 'var/log/journal'],
    ['rotated logs in /var/log (*.gz)', 'var/log'],
    ['/var/tmp', 'var/tmp'],
  ] as const) {
    const bytes = await duBytes(path.join(i.systemRoot, p), p === 'var/log' ? /\.(gz|[0-9])$/ : null);
    if (bytes > 0) cleanable.push({ what, bytes });
  }
  cleanable.sort((a, b) => b.bytes - a.bytes);
  return {
    firmware,
    grubVersion,
    grubPackages,
    root: { fsType: rootMount.fsType, source: rootMount.source },
    env: { writable: env.writable, reason: env.reason },
    boot: { separate, fsType: bootMount?.fsType ?? rootMount.fsType },
    space: { freeBytes: await freeBytes(i.host), neededBytes: i.neededBytes, imageBytes: i.imageBytes, reserveBytes: i.reserveBytes, keepImages: i.keepImages },
    cleanable,
  };
}

/** GRUB platform packages dpkg has installed in `root` (grub-pc, grub-efi-amd64, ...) with their versions, from its own database. */
async function installedGrubPackages(root: string): Promise<Array<{ name: string; version: string }>> {
  const r = await run(
    'dpkg-query',
    ['--admindir', path.join(root, 'var/lib/dpkg'), '-W', '-f', '${Package} ${db:Status-Abbrev} ${Version}\n', 'grub-pc', 'grub-efi-*'],
    { allowFailure: true },
  ).catch(() => null);
  if (!r) return [];
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[1]?.startsWith('ii') && f[2])
    .map((f) => ({ name: f[0]!, version: f[2]! }))
    .filter((p) => p.name === 'grub-pc' || (p.name.startsWith('grub-efi-') && !p.name.endsWith('-bin') && !p.name.endsWith('-signed')));
}

/** Allocated bytes under `dir` (files matching `only`, when given); 0 when absent. */
async function duBytes(dir: string, only: RegExp | null): Promise<number> {
  let total = 0;
  const walk = async (d: string, depth: number): Promise<void> => {
    const names = await fsp.readdir(d, { withFileTypes: true }).catch(() => []);
    for (const e of names) {
      const p = path.join(d, e.name);
      if (e.isDirectory() && depth < 8) await walk(p, depth + 1);
      else if (e.isFile() && (!only || only.test(e.name))) total += ((await fsp.lstat(p).catch(() => null))?.blocks ?? 0) * 512;
    }
  };
  await walk(dir, 0);
  return total;
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}
