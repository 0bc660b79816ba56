/**
 * How the device switches into a prepared image (issue #18): a full `reboot` through the firmware
 * and GRUB's try-once, `kexec` into the new image's kernel (skips firmware and bootloader), or
 * systemd's `soft-reboot` into the new root (skips the kernel too, so only when the kernel and
 * initrd are byte-identical). All three keep the same safety: the committed default in grubenv
 * changes only when the new image's health check passes, so any failure that ends in a real
 * reboot lands on the committed image. Pure: the facts are gathered by switch-facts.ts.
 */
export const REBOOT_METHODS = ['reboot', 'kexec', 'soft-reboot'] as const;
export type RebootMethod = (typeof REBOOT_METHODS)[number];
export type RebootMethodSetting = RebootMethod | 'auto';
export const REBOOT_METHOD_SETTINGS: readonly RebootMethodSetting[] = [...REBOOT_METHODS, 'auto'];

/** systemd gained `systemctl soft-reboot` in 254. */
export const SOFT_REBOOT_MIN_SYSTEMD = 254;

export interface SwitchFacts {
  /** /vmlinuz and /initrd.img of the target are byte-identical to the running image's (null: unknown). */
  sameKernel: boolean | null;
  kexec: {
    /** The running kernel can kexec (/sys/kernel/kexec_loaded exists: CONFIG_KEXEC_CORE). */
    kernel: boolean;
    /** The active kernel lockdown mode (/sys/kernel/security/lockdown), null when there is none. */
    lockdown: string | null;
    /** The kexec binary (kexec-tools) was found. */
    tool: boolean;
  };
  /** Version of the systemd running as PID 1, null when PID 1 is not systemd. */
  systemd: number | null;
}

export interface MethodChoice {
  method: RebootMethod;
  /** Why this method, in a sentence (logged and kept in the journal). */
  reason: string;
}

/** Why kexec cannot be used here, or null when it can. */
export function kexecUnavailable(f: SwitchFacts): string | null {
  if (!f.kexec.kernel) return 'the running kernel has no kexec support (no /sys/kernel/kexec_loaded)';
  // kexec_load is refused under lockdown, and kexec_file_load would need a kernel signed for it.
  if (f.kexec.lockdown && f.kexec.lockdown !== 'none') return `the kernel is locked down (${f.kexec.lockdown}, Secure Boot)`;
  if (!f.kexec.tool) return 'the kexec binary (kexec-tools) is not installed';
  return null;
}

/** Why soft-reboot cannot be used here, or null when it can. */
export function softRebootUnavailable(f: SwitchFacts): string | null {
  if (f.systemd === null) return 'PID 1 is not systemd';
  if (f.systemd < SOFT_REBOOT_MIN_SYSTEMD) return `systemd ${f.systemd} has no soft-reboot (${SOFT_REBOOT_MIN_SYSTEMD} or later needed)`;
  if (f.sameKernel !== true) return f.sameKernel === null ? 'the kernels could not be compared' : 'the new image has a different kernel or initrd';
  return null;
}

/**
 * The method for this switch. `auto`: soft-reboot when the kernel and initrd are unchanged, else
 * kexec where the kernel allows it, else a full reboot. A method asked for by name that cannot be
 * used falls to the next one in that order, and the reason says why (never an error: the upgrade
 * must still happen, only slower).
 */
export function chooseRebootMethod(wanted: RebootMethodSetting, f: SwitchFacts): MethodChoice {
  if (wanted === 'reboot') return { method: 'reboot', reason: 'reboot.method is reboot' };
  const soft = softRebootUnavailable(f);
  const kexec = kexecUnavailable(f);
  const notes: string[] = [];
  if (wanted === 'soft-reboot' || wanted === 'auto') {
    if (soft === null) return { method: 'soft-reboot', reason: 'the kernel and initrd are unchanged and systemd can soft-reboot' };
    notes.push(`no soft-reboot: ${soft}`);
  }
  if (kexec === null) return { method: 'kexec', reason: notes.length ? `${notes.join('; ')}; kexec is available` : 'kexec is available' };
  notes.push(`no kexec: ${kexec}`);
  return { method: 'reboot', reason: `${notes.join('; ')}; rebooting normally` };
}

/** The active mode of /sys/kernel/security/lockdown ("none [integrity] confidentiality" → integrity). */
export function parseLockdown(text: string | null): string | null {
  if (text === null) return null;
  const m = /\[([a-z]+)\]/.exec(text);
  return m ? m[1]! : null;
}

/** The major version from `systemctl --version` ("systemd 257 (257.9-1~deb13u1)" → 257). */
export function parseSystemdVersion(text: string): number | null {
  const m = /^systemd (\d+)/m.exec(text);
  return m ? Number(m[1]) : null;
}

/**
 * The kernel command line for a kexec trial: what GRUB would give the target (assets/grub/10_ibu:
 * `loop=/images/<v>.img ... ibu.version=<v> ibu.trial=1`), derived from the running one. GRUB's
 * boot counters (ibu.attempt/tally/bad/tryclear) are dropped: GRUB did not count this boot.
 */
export function kexecCommandLine(running: string, target: string): string {
  const drop = /^(ibu\.(attempt|tally|bad|tryclear|trial|version)|BOOT_IMAGE|initrd)=/;
  const words = running
    .trim()
    .split(/\s+/)
    .filter((w) => w !== '' && !drop.test(w))
    .map((w) => (w.startsWith('loop=') ? w.replace(/[^/=]+\.img$/, `${target}.img`) : w));
  if (!words.some((w) => w.startsWith('loop='))) words.push(`loop=/images/${target}.img`);
  return [...words, `ibu.version=${target}`, 'ibu.trial=1'].join(' ');
}
