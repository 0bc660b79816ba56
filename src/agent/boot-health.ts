/**
 * What the agent does about the boot itself, every time `upgradectl confirm` runs at boot
 * (issue #14, docs/boot.md "Failures"): mark the boot good (GRUB stops counting this image's
 * boots), repair a damaged env copy from the valid one, rebuild a lost env with the committed
 * image (never silently with whatever happened to boot), and tell the server when the device is
 * not on its committed image or its env had to be repaired. The plan is pure; healBoot applies it.
 */
import { isIbuError } from '../errors.js';
import type { BootState } from '../boot/bootloader.js';
import type { DeviceEventType } from '../fleet/protocol.js';
import type { AgentContext } from './agent-context.js';
import { queueEvent } from './events.js';
import type { Journal } from './journal.js';

export interface BootHealthInput {
  running: string | null;
  /** This boot is a one-shot trial (ibu.trial=1, or the journal's upgrade target is running). */
  trial: boolean;
  /** The env as read, or null when neither copy is valid. */
  boot: BootState | null;
  /** Why copies were unusable (one when `boot` is set, both when it is null). */
  damaged: string[];
  installed: string[];
  journal: Pick<Journal, 'lastDefault' | 'bootReport'>;
}

export interface BootEvent {
  type: Extract<DeviceEventType, 'boot-fallback' | 'bootenv-repaired'>;
  from: string | null;
  to: string | null;
  code: 'BOOT_FALLBACK' | 'BOOTENV_REPAIRED';
  message: string;
}

export interface BootHealthPlan {
  /** Both copies lost: write a fresh env naming this default. */
  rebuild: string | null;
  /** Reset the boot counter for this version (and rewrite both copies). */
  markGood: string | null;
  events: BootEvent[];
  /** The journal's new bootReport (null: nothing wrong now). */
  report: string | null;
  /** The default the journal remembers from now on. */
  lastDefault: string | null;
}

/** Why GRUB did not boot the committed image, from what it left in the env and on the disk. */
function fallbackReason(def: string, boot: BootState, installed: string[]): string {
  if (boot.bad.includes(def)) return `GRUB gave up on ${def} (it did not come up within its boot attempts, or GRUB could not load its kernel)`;
  if (!installed.includes(def)) return `${def}.img is missing`;
  return `GRUB could not use ${def}.img (empty or damaged file, or no /vmlinuz or /initrd.img in it)`;
}

export function planBootHealth(i: BootHealthInput): BootHealthPlan {
  const events: BootEvent[] = [];
  const { running, boot } = i;
  if (!boot) {
    // Both copies unusable. The committed image the agent last saw stays the default when it is
    // still installed; only a device that never had one takes the running image, and says so.
    const known = i.journal.lastDefault && i.installed.includes(i.journal.lastDefault) ? i.journal.lastDefault : null;
    const def = known ?? running;
    if (!def) return { rebuild: null, markGood: null, events, report: i.journal.bootReport ?? null, lastDefault: i.journal.lastDefault ?? null };
    const why = known ? `the committed image the agent last saw` : `the running image: the agent knew no committed image that is still installed`;
    events.push({
      type: 'bootenv-repaired',
      from: def,
      to: running,
      code: 'BOOTENV_REPAIRED',
      message: `Both copies of the boot environment were unusable (${i.damaged.join(' ')}); rebuilt with default_image=${def} (${why}).`,
    });
    let report: string | null = null;
    if (running && running !== def && !i.trial) {
      report = `fallback ${running} ${def} env-lost`;
      events.push({
        type: 'boot-fallback',
        from: def,
        to: running,
        code: 'BOOT_FALLBACK',
        message: `The device booted ${running} while its boot environment was lost; ${def} stays the committed default and boots next time.`,
      });
    }
    return { rebuild: def, markGood: running, events, report, lastDefault: def };
  }
  if (i.damaged.length > 0) {
    events.push({
      type: 'bootenv-repaired',
      from: boot.defaultImage,
      to: running,
      code: 'BOOTENV_REPAIRED',
      message: `${i.damaged.join(' ')} Rewritten from ${boot.source}.`,
    });
  }
  let report: string | null = null;
  const def = boot.defaultImage;
  if (running && def && running !== def && !i.trial) {
    const reason = fallbackReason(def, boot, i.installed);
    report = `fallback ${running} ${def} ${reason}`;
    if (report !== i.journal.bootReport) {
      events.push({
        type: 'boot-fallback',
        from: def,
        to: running,
        code: 'BOOT_FALLBACK',
        message:
          `Booted ${running} instead of the committed ${def}: ${reason}. ` +
          `${def} stays the committed default; the agent does not commit ${running} by itself.`,
      });
    }
  }
  // Nothing to write when GRUB counted nothing, nothing is damaged and the image is not marked bad.
  const needsWrite = running !== null && (boot.attempt !== null || boot.bad.includes(running) || i.damaged.length > 0);
  return { rebuild: null, markGood: needsWrite ? running : null, events, report, lastDefault: def ?? i.journal.lastDefault ?? null };
}

/** Reads the boot state, applies planBootHealth, queues its events; returns the plan (for logs and tests). */
export async function healBoot(ctx: AgentContext, running: string | null, trial: boolean): Promise<BootHealthPlan> {
  let boot: BootState | null = null;
  let damaged: string[] = [];
  try {
    boot = await ctx.boot.read();
    damaged = boot.warnings;
  } catch (err) {
    if (!isIbuError(err, 'BOOTENV_INVALID')) throw err;
    damaged = [err.message.replace(/ Run 'upgradectl.*$/, '')];
  }
  const installed = await ctx.dir.installed();
  const plan = planBootHealth({ running, trial, boot, damaged, installed, journal: ctx.journal.j });
  if (plan.rebuild) await ctx.boot.init(plan.rebuild);
  if (plan.markGood) await ctx.boot.markGood(plan.markGood);
  for (const e of plan.events) {
    ctx.log(`${e.type}: ${e.message}`);
    queueEvent(ctx.journal, ctx.now(), e.type, e.from, e.to, { code: e.code, message: e.message });
  }
  const j = ctx.journal.j;
  if (plan.events.length > 0 || plan.report !== (j.bootReport ?? null) || plan.lastDefault !== (j.lastDefault ?? null)) {
    await ctx.journal.record({ bootReport: plan.report, lastDefault: plan.lastDefault });
  }
  return plan;
}
