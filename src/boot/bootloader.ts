/**
 * The agent's view of the boot loader: which image is committed, which one (if any) gets a
 * single trial boot. Implementations: the redundant grubenv (src/boot/grub-bootloader.ts). Kept
 * small so another boot loader (systemd-boot, U-Boot) is one more file.
 */
export interface BootState {
  /** The committed image version (`default_image`), booted whenever no trial is pending. */
  defaultImage: string | null;
  /** The one-shot trial version (`try_image`), cleared before it boots. */
  tryImage: string | null;
  /** Where the state was read from, for status output (e.g. `/host/boot/grub/grubenv`). */
  source: string;
  /** Problems that did not stop the read, e.g. one copy torn and the other used. */
  warnings: string[];
  /** Images GRUB gave up on (used up their boot attempts, or a kernel it could not load), `ibu_bad`. */
  bad: string[];
  /** The image GRUB is counting boots of, and how many it counted, until a boot is marked good. */
  attempt: { image: string; boots: number } | null;
  /** `ibu_adopted`: the version `upgradectl adopt` installed while the conventional system is still GRUB's last resort. */
  adopted?: string | null;
}

export type TryClearedBy = 'grub' | 'initramfs';

export interface BootloaderInfo {
  kind: 'grubenv';
  /** Directory holding the env copies. */
  dir: string;
  files: string[];
  /** Who clears try_image on the trial boot: GRUB's save_env, or the initramfs when GRUB cannot write. */
  tryClearedBy: TryClearedBy;
  /** Why this location / mode was chosen (detection result). */
  reason: string;
}

export interface WriteResult {
  /** True when a file was created rather than rewritten in place: the filesystem must be checkpointed before GRUB can see it. */
  created: boolean;
}

export interface Bootloader {
  readonly info: BootloaderInfo;
  read(): Promise<BootState>;
  /** Makes `version` boot exactly once on the next boot. */
  setTry(version: string): Promise<WriteResult>;
  clearTry(): Promise<WriteResult>;
  /** Commits `version` as the default and clears any pending trial. */
  commit(version: string): Promise<WriteResult>;
  /** Writes a fresh environment naming `version` as the default (first install, repair). */
  init(version: string): Promise<WriteResult>;
  /**
   * The running `version` came up: reset GRUB's boot counter, take it off the skip list, and
   * rewrite both copies (which repairs a damaged one from the valid one).
   */
  markGood(version: string): Promise<WriteResult>;
}
