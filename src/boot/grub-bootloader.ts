import * as path from 'node:path';
import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { Bootloader, BootloaderInfo, BootState, TryClearedBy, WriteResult } from './bootloader.js';
import { formatEnvBlock, readEnvFile, writeEnvInPlace, type EnvVars } from './grubenv.js';

/** Env file names inside the env directory: the primary copy (GRUB's default name) and the backup. */
export const ENV_PRIMARY = 'grubenv';
export const ENV_BACKUP = 'grubenv.bak';

/** grubenv variable names shared with assets/grub (see docs/agent.md, "Bootloader contract"). */
export const VAR_DEFAULT = 'default_image';
export const VAR_TRY = 'try_image';
export const VAR_SEQ = 'ibu_seq';
export const VAR_CHECK = 'ibu_check';
export const VAR_TRY_CLEAR = 'ibu_try_clear';
/** GRUB's boot counting (assets/grub/10_ibu): the image being counted, one x per boot, and the images given up on. */
export const VAR_ATTEMPT = 'ibu_attempt';
export const VAR_TALLY = 'ibu_tally';
export const VAR_BAD = 'ibu_bad';
/** Installed images newest first, written by the agent: GRUB's fallback order after default_image. */
export const VAR_IMAGES = 'ibu_images';
/**
 * Set by `upgradectl adopt` to the adopted version: the machine still has its conventional system,
 * which GRUB boots (the distribution's menu entries after the ibu script) when no image can boot,
 * and no image boots before one is committed. Removed by the first commit of another version, or
 * by `upgradectl adopt --finalize`; from then on GRUB never leaves the images (assets/grub/10_ibu).
 */
export const VAR_ADOPTED = 'ibu_adopted';

export interface GrubBootloaderOptions {
  dir: string;
  tryClearedBy?: TryClearedBy;
  reason?: string;
  /** Called after each copy is durably written (index 0 = primary); the crash harness uses it. */
  afterCopyWritten?: (index: number) => void | Promise<void>;
  /** Installed image versions, newest first: written as ibu_images with every update. */
  listImages?: () => Promise<string[]>;
}

interface CopyRead {
  file: string;
  vars: EnvVars | null;
  seq: number;
  reason?: string;
  missing?: boolean;
}

/**
 * grubenv kept as two full copies (the Mender approach against torn writes). Every update writes
 * the primary in place and fsyncs it, then the backup, so at any instant at least one copy is
 * whole. Each copy carries `ibu_seq=N` first and `ibu_check=N` last; a copy is valid when GRUB's
 * signature is intact and both are present and equal. A copy without them is damaged (or not
 * ours): GRUB ignores it too, so the agent must not trust it either (issue #14). Readers take the
 * valid copy with the highest sequence (primary on a tie), exactly what the GRUB script does by
 * preferring a valid primary, since the primary is always written first.
 */
export class GrubBootloader implements Bootloader {
  readonly info: BootloaderInfo;
  private readonly afterCopyWritten?: (index: number) => void | Promise<void>;
  private readonly listImages?: () => Promise<string[]>;

  constructor(opts: GrubBootloaderOptions) {
    this.info = {
      kind: 'grubenv',
      dir: opts.dir,
      files: [path.join(opts.dir, ENV_PRIMARY), path.join(opts.dir, ENV_BACKUP)],
      tryClearedBy: opts.tryClearedBy ?? 'grub',
      reason: opts.reason ?? 'configured',
    };
    this.afterCopyWritten = opts.afterCopyWritten;
    this.listImages = opts.listImages;
  }

  private async readCopies(): Promise<CopyRead[]> {
    return Promise.all(
      this.info.files.map(async (file): Promise<CopyRead> => {
        const r = await readEnvFile(file);
        if (!r.ok) return { file, vars: null, seq: -1, reason: r.reason, missing: r.missing };
        const seq = r.vars[VAR_SEQ];
        if (seq === undefined && r.vars[VAR_CHECK] === undefined) {
          return { file, vars: null, seq: -1, reason: `${file} has no ${VAR_SEQ}/${VAR_CHECK} markers: not a copy the agent wrote, GRUB ignores it.` };
        }
        if (seq === undefined || !/^\d+$/.test(seq) || r.vars[VAR_CHECK] !== seq) {
          return { file, vars: null, seq: -1, reason: `${file} is incomplete (${VAR_SEQ}/${VAR_CHECK} missing or different): a write to it was interrupted.` };
        }
        return { file, vars: r.vars, seq: Number(seq) };
      }),
    );
  }

  /** The newest valid copy; the primary wins a tie because GRUB prefers it. */
  private static pick(copies: CopyRead[]): CopyRead | null {
    let best: CopyRead | null = null;
    for (const c of copies) if (c.vars && (best === null || c.seq > best.seq)) best = c;
    return best;
  }

  async read(): Promise<BootState> {
    const copies = await this.readCopies();
    const best = GrubBootloader.pick(copies);
    if (!best) {
      const why = copies.map((c) => c.reason).join(' ');
      throw new IbuError(
        'BOOTENV_INVALID',
        `No valid boot environment in ${this.info.dir}: ${why} ` +
          "Run 'upgradectl rollback --repair' (or 'upgradectl init --default VERSION') to write a fresh one.",
        {
          details: { missing: copies.every((c) => c.missing) },
        },
      );
    }
    const warnings = copies.filter((c) => !c.vars).map((c) => c.reason ?? `${c.file} is unusable`);
    const v = best.vars!;
    const tally = v[VAR_TALLY] ?? '';
    return {
      defaultImage: v[VAR_DEFAULT] || null,
      tryImage: v[VAR_TRY] || null,
      source: best.file,
      warnings,
      bad: words(v[VAR_BAD]),
      attempt: v[VAR_ATTEMPT] ? { image: v[VAR_ATTEMPT], boots: tally.length } : null,
      // only on adopted machines: every other reader's view of the state stays as it was
      ...(v[VAR_ADOPTED] ? { adopted: v[VAR_ADOPTED] } : {}),
    };
  }

  /** Read-modify-write of both copies; keeps variables it does not own (e.g. GRUB's saved_entry). */
  private async update(mutate: (vars: EnvVars) => void, fresh = false): Promise<WriteResult> {
    const copies = await this.readCopies();
    const best = GrubBootloader.pick(copies);
    if (!best && !fresh) {
      throw new IbuError(
        'BOOTENV_INVALID',
        `No valid boot environment in ${this.info.dir}; refusing to guess the default image. ` +
          "Run 'upgradectl init --default VERSION' to write a fresh one.",
      );
    }
    const base: EnvVars = { ...(fresh ? {} : best!.vars!) };
    delete base[VAR_SEQ];
    delete base[VAR_CHECK];
    mutate(base);
    if (this.listImages) base[VAR_IMAGES] = (await this.listImages()).join(' ');
    if (this.info.tryClearedBy === 'initramfs') base[VAR_TRY_CLEAR] = 'initramfs';
    else delete base[VAR_TRY_CLEAR];
    const seq = Math.max(...copies.map((c) => c.seq), 0) + 1;
    // ibu_seq first and ibu_check last: a copy torn anywhere in between fails the equality check.
    const ordered: EnvVars = { [VAR_SEQ]: String(seq) };
    for (const [k, val] of Object.entries(base)) if (val !== '') ordered[k] = val;
    ordered[VAR_CHECK] = String(seq);
    const block = formatEnvBlock(ordered);
    let created = false;
    await fsp.mkdir(this.info.dir, { recursive: true });
    for (let i = 0; i < this.info.files.length; i++) {
      const file = this.info.files[i]!;
      if (!(await writeEnvInPlace(file, block))) {
        // Missing or wrong size: create it whole; GRUB only sees it after a checkpoint.
        await writeFileAtomic(file, block);
        created = true;
      }
      await this.afterCopyWritten?.(i);
    }
    return { created };
  }

  setTry(version: string): Promise<WriteResult> {
    return this.update((v) => {
      v[VAR_TRY] = version;
      // A newly installed image of this version gets its boot attempts afresh.
      unmarkBad(v, version);
    });
  }

  clearTry(): Promise<WriteResult> {
    return this.update((v) => {
      delete v[VAR_TRY];
    });
  }

  commit(version: string): Promise<WriteResult> {
    return this.update((v) => {
      v[VAR_DEFAULT] = version;
      delete v[VAR_TRY];
      unmarkBad(v, version);
      // The first committed upgrade after an adoption ends the conventional system's last-resort role.
      if (v[VAR_ADOPTED] && v[VAR_ADOPTED] !== version) delete v[VAR_ADOPTED];
    });
  }

  /**
   * A fresh env for a conventionally installed machine being adopted: no default image (GRUB boots
   * only a trial, else the conventional system), `ibu_adopted` naming the version. Keeps nothing.
   */
  initAdopted(version: string): Promise<WriteResult> {
    return this.update((v) => {
      v[VAR_ADOPTED] = version;
    }, true);
  }

  /** `upgradectl adopt --finalize`: the conventional system stops being GRUB's last resort. */
  finalizeAdoption(): Promise<WriteResult> {
    return this.update((v) => {
      delete v[VAR_ADOPTED];
    });
  }

  markGood(version: string): Promise<WriteResult> {
    return this.update((v) => {
      delete v[VAR_ATTEMPT];
      delete v[VAR_TALLY];
      unmarkBad(v, version);
    });
  }

  init(version: string): Promise<WriteResult> {
    return this.update((v) => {
      v[VAR_DEFAULT] = version;
    }, true);
  }
}

function words(s: string | undefined): string[] {
  return (s ?? '').split(/\s+/).filter((w) => w !== '');
}

function unmarkBad(v: EnvVars, version: string): void {
  const bad = words(v[VAR_BAD]).filter((b) => b !== version);
  if (bad.length) v[VAR_BAD] = bad.join(' ');
  else delete v[VAR_BAD];
}
