import { IbuError } from '../errors.js';
import type { TryClearedBy } from '../boot/bootloader.js';
import { planCleanup } from './disk-policy.js';

/** What `upgradectl adopt` needs to know about a conventionally installed machine (gathered by adopt-probe.ts). */
export interface AdoptFacts {
  firmware: 'uefi' | 'bios';
  /** The installed GRUB package's version (e.g. "2.06-13+deb12u1"), null when no GRUB package is installed. */
  grubVersion: string | null;
  /** Installed GRUB platform packages (grub-pc, grub-efi-amd64, ...). */
  grubPackages: string[];
  root: { fsType: string; source: string };
  /** Can GRUB write an env block on the root fs (plain partition), and why (src/boot/env-location.ts). */
  env: { writable: boolean; reason: string };
  /** /boot on its own filesystem (GRUB reads grub.cfg from there; the images stay on the root fs). */
  boot: { separate: boolean; fsType: string };
  space: {
    freeBytes: number;
    /** Bytes the image will allocate (its non-zero chunks' blocks), minus what a partial download already holds. */
    neededBytes: number;
    imageBytes: number;
    reserveBytes: number;
    keepImages: number;
  };
  /** Things on the root fs that could be deleted to make room, largest first (for NO_SPACE's message). */
  cleanable: Array<{ what: string; bytes: number }>;
}

export interface AdoptPlan {
  tryClearedBy: TryClearedBy;
  envReason: string;
  /** The GRUB package the distribution boots with, for the report. */
  grubPackage: string;
  requiredBytes: number;
  warnings: string[];
}

/** Oldest GRUB whose script language has what the ibu script uses (loopback, load_env/save_env --file, regexp --set, functions). */
export const MIN_GRUB = [2, 2] as const;

function grubTooOld(v: string): boolean {
  const m = /^(\d+)\.(\d+)/.exec(v);
  if (!m) return true;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj < MIN_GRUB[0] || (maj === MIN_GRUB[0] && min < MIN_GRUB[1]);
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

/**
 * Preflight of an adoption, pure: every reason the machine cannot be adopted as it is, in one
 * ADOPT_UNSUPPORTED (details.problems), else NO_SPACE with how much is missing and what could be
 * deleted, else the plan. Nothing is touched before this has passed.
 */
export function planAdoption(f: AdoptFacts): AdoptPlan {
  const problems: string[] = [];
  if (f.root.fsType !== 'ext4') {
    problems.push(
      `the root filesystem (${f.root.source}) is ${f.root.fsType}; adoption keeps the images on the root filesystem and needs ext4 ` +
        '(GRUB loopback and the initramfs mount it as the host partition)',
    );
  }
  const pkgs = f.grubPackages;
  const want = f.firmware === 'uefi' ? pkgs.find((p) => p.startsWith('grub-efi')) : pkgs.find((p) => p === 'grub-pc');
  if (f.grubVersion === null) problems.push('no GRUB package is installed (grub-pc or grub-efi-*); adoption boots the images through the distribution GRUB');
  else if (grubTooOld(f.grubVersion)) problems.push(`GRUB ${f.grubVersion} is older than ${MIN_GRUB.join('.0')}; upgrade grub2 first`);
  if (f.grubVersion !== null && !want) {
    problems.push(
      f.firmware === 'uefi'
        ? `the machine boots through UEFI but no grub-efi package is installed (found: ${pkgs.join(', ') || 'none'})`
        : `the machine boots through BIOS but grub-pc is not installed (found: ${pkgs.join(', ') || 'none'})`,
    );
  }
  if (problems.length > 0) {
    throw new IbuError('ADOPT_UNSUPPORTED', `This machine cannot be adopted as it is: ${problems.join('; ')}. Nothing was changed.`, {
      details: { problems },
    });
  }
  const s = f.space;
  const plan = planCleanup({
    freeBytes: s.freeBytes,
    neededBytes: s.neededBytes,
    imageBytes: s.imageBytes,
    reserveBytes: s.reserveBytes,
    keepImages: s.keepImages,
    files: [],
    protect: [],
  });
  if (!plan.ok) {
    const hints = f.cleanable.filter((c) => c.bytes > 0).map((c) => `${c.what} (${mib(c.bytes)})`);
    throw new IbuError(
      'NO_SPACE',
      `Not enough space on the root filesystem to adopt: the image needs ${mib(plan.required)} ` +
        `(${mib(s.neededBytes)} of image + ${mib(s.reserveBytes)} reserve), ` +
        `${mib(s.freeBytes)} is free, ${mib(plan.shortBy)} missing. ` +
        (hints.length ? `Could be cleaned: ${hints.join(', ')}. ` : '') +
        'Nothing was changed.',
      { details: { required: plan.required, free: s.freeBytes, shortBy: plan.shortBy, cleanable: f.cleanable } },
    );
  }
  const warnings: string[] = [];
  if (s.freeBytes < plan.desired) warnings.push(`free space is below the disk policy's headroom of ${s.keepImages} images; later upgrades may need a cleanup`);
  if (!f.env.writable) warnings.push(`GRUB cannot write the boot environment here (${f.env.reason}); the initramfs clears the trial flag`);
  return {
    tryClearedBy: f.env.writable ? 'grub' : 'initramfs',
    envReason: f.env.reason,
    grubPackage: want!,
    requiredBytes: plan.required,
    warnings,
  };
}
