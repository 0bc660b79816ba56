import { compareVersions } from '../version.js';
import type { Journal, StepName } from './journal.js';

/**
 * The agent's heart, with no I/O: from the journal (what we meant to do and how far we got) and
 * the facts on disk (what is really there and what GRUB will boot), the next step to run. The
 * executor (src/agent/agent.ts) runs the step, records it, gathers the facts again and asks
 * again, so a crash anywhere resumes at the first step whose effect is not yet visible.
 */
export interface DeviceFacts {
  /** The version booted now (from `loop=` on the kernel command line), null when unknown. */
  running: string | null;
  boot: { defaultImage: string | null; tryImage: string | null };
  /** Complete images `<v>.img` (only ever created by renaming a verified download). */
  installed: string[];
  /** Downloads in progress `<v>.img.partial`. */
  partials: string[];
  /** This boot's id (/proc/sys/kernel/random/boot_id): tells a kexec that has not happened yet from one that failed. */
  bootId?: string | null;
}

export type Intent = { kind: 'prepare'; version?: string } | { kind: 'apply' } | { kind: 'confirm' } | { kind: 'rollback' };

export type Step =
  | { kind: 'resolve-target' }
  | { kind: 'reserve-space' }
  | { kind: 'download' }
  | { kind: 'verify' }
  | { kind: 'fsck' }
  | { kind: 'install' }
  | { kind: 'mark-prepared' }
  | { kind: 'migrate' }
  | { kind: 'checkpoint' }
  /** Pick reboot, kexec or soft-reboot for this trial and record it (reboot-method.ts). */
  | { kind: 'choose-method' }
  | { kind: 'set-try' }
  /** kexec: load the target's kernel; soft-reboot: mount the target at /run/nextroot. */
  | { kind: 'load-switch' }
  | { kind: 'reboot'; why: 'apply' | 'revert' }
  | { kind: 'health' }
  | { kind: 'commit' }
  /** Trial failed or asked by hand: leave the committed default, clear try, reboot into it. */
  | { kind: 'revert'; reason: string }
  /** The device came back on the old image by itself: record the rollback. */
  | { kind: 'record-fallback' }
  /** Applied (or half applied) but not rebooted yet: clear try_image if set, go back to prepared. */
  | { kind: 'cancel-try' }
  /** Rollback from a committed image to an older installed one. */
  | { kind: 'rollback-committed'; to: string }
  | { kind: 'done'; outcome: Outcome; message: string }
  | { kind: 'fail'; code: 'NOTHING_TO_DO' | 'NOT_FOUND' | 'IMAGE_IN_USE' | 'INTERNAL'; message: string };

export type Outcome = 'up-to-date' | 'prepared' | 'busy' | 'rebooting' | 'committed' | 'not-trial' | 'rolled-back' | 'cancelled' | 'nothing';

const PREPARE_ORDER: StepName[] = ['resolve-target', 'reserve-space', 'download', 'verify', 'fsck', 'install'];

export function nextStep(j: Journal, f: DeviceFacts, intent: Intent): Step {
  switch (intent.kind) {
    case 'prepare':
      return nextPrepare(j, f, intent.version);
    case 'apply':
      return nextApply(j, f);
    case 'confirm':
      return nextConfirm(j, f);
    case 'rollback':
      return nextRollback(j, f);
  }
}

function nextPrepare(j: Journal, f: DeviceFacts, wanted?: string): Step {
  const target = j.target?.version;
  if (j.state === 'applying' || j.state === 'trial') {
    return { kind: 'done', outcome: 'busy', message: `An upgrade to ${target} is being applied; prepare again after it is confirmed or rolled back.` };
  }
  if (wanted !== undefined && target !== wanted && (j.state === 'preparing' || j.state === 'prepared')) return { kind: 'resolve-target' };
  if (j.state === 'prepared') {
    if (target && f.installed.includes(target)) {
      if (wanted === undefined && target !== f.running) return { kind: 'resolve-target' }; // the server may name a newer one
      return { kind: 'done', outcome: 'prepared', message: `${target} is prepared; run 'upgradectl apply' to boot it.` };
    }
    return { kind: 'resolve-target' };
  }
  if (j.state !== 'preparing' || !target) return { kind: 'resolve-target' };
  // preparing: the facts first, then where the journal says we got to.
  if (f.installed.includes(target)) return { kind: 'mark-prepared' };
  const done = j.step ? PREPARE_ORDER.indexOf(j.step) : -1;
  if (done >= PREPARE_ORDER.indexOf('download') && !f.partials.includes(target)) return { kind: 'reserve-space' };
  const next = PREPARE_ORDER[done + 1];
  if (next === undefined || next === 'resolve-target') return { kind: 'reserve-space' };
  return { kind: next } as Step;
}

function nextApply(j: Journal, f: DeviceFacts): Step {
  const target = j.target?.version;
  if (!target || (j.state !== 'prepared' && j.state !== 'applying')) {
    if (j.state === 'trial') return { kind: 'done', outcome: 'busy', message: `${target} is on trial; 'upgradectl confirm' decides.` };
    return { kind: 'fail', code: 'NOTHING_TO_DO', message: `Nothing is prepared (state ${j.state}); run 'upgradectl prepare' first.` };
  }
  if (f.running === target) return { kind: 'done', outcome: 'busy', message: `${target} is already running on trial; 'upgradectl confirm' decides.` };
  if (!f.installed.includes(target)) {
    return { kind: 'fail', code: 'NOT_FOUND', message: `The prepared image ${target} is no longer installed; run 'upgradectl prepare' again.` };
  }
  if (j.state === 'prepared') return { kind: 'migrate' };
  const fast = j.switch && j.switch.method !== 'reboot';
  switch (j.step) {
    case null:
      return { kind: 'migrate' };
    case 'migrate':
      return { kind: 'checkpoint' };
    case 'checkpoint':
      return f.boot.tryImage === target ? { kind: 'reboot', why: 'apply' } : { kind: 'choose-method' };
    case 'choose-method':
      return fast ? { kind: 'load-switch' } : { kind: 'set-try' };
    case 'load-switch':
      return { kind: 'reboot', why: 'apply' };
    case 'set-try':
    case 'reboot':
      if (f.boot.tryImage === target) return { kind: 'reboot', why: 'apply' };
      // kexec / soft-reboot leave grubenv alone: the same boot means the switch has not happened yet.
      if (fast && notSwitchedYet(j, f)) return { kind: 'load-switch' };
      // try_image was consumed by a boot (or the fast switch happened) and we are back on the old image: the trial failed.
      return { kind: 'record-fallback' };
    default:
      return { kind: 'migrate' };
  }
}

/** A kexec or soft-reboot was prepared in this very boot (same boot id), so the trial has not run yet. */
function notSwitchedYet(j: Journal, f: DeviceFacts): boolean {
  return !!j.switch?.bootId && j.switch.bootId === f.bootId;
}

function nextConfirm(j: Journal, f: DeviceFacts): Step {
  const target = j.target?.version ?? null;
  if (f.running === null)
    return {
      kind: 'fail',
      code: 'INTERNAL',
      message: 'The running image is unknown (no loop=/images/<v>.img on the kernel command line and no runningVersion in the config).',
    };
  if (f.running !== f.boot.defaultImage) {
    // A trial boot (GRUB has cleared try_image) or a by-hand boot of a non-default image.
    if (j.state === 'rolled-back' && target === f.running) return { kind: 'reboot', why: 'revert' };
    if (j.state === 'trial' && target === f.running && j.step === 'health') return { kind: 'commit' };
    return { kind: 'health' };
  }
  if (j.state === 'trial' && target === f.running) return { kind: 'commit' }; // committed in grubenv, not yet recorded
  if (j.state === 'trial' && target !== f.running) return { kind: 'record-fallback' };
  if (j.state === 'applying' && (j.step === 'set-try' || j.step === 'reboot') && f.boot.tryImage !== target) {
    if (j.switch && j.switch.method !== 'reboot' && notSwitchedYet(j, f))
      return { kind: 'done', outcome: 'busy', message: `The switch into ${target} by ${j.switch.method} has not happened yet; run 'upgradectl apply' again.` };
    return { kind: 'record-fallback' };
  }
  return { kind: 'done', outcome: 'not-trial', message: `${f.running} is the committed image; nothing to confirm.` };
}

function nextRollback(j: Journal, f: DeviceFacts): Step {
  const target = j.target?.version ?? null;
  if (f.running === null) return { kind: 'fail', code: 'INTERNAL', message: 'The running image is unknown; cannot tell what to roll back.' };
  if (j.state === 'rolled-back' && target === f.running && f.running !== f.boot.defaultImage) return { kind: 'reboot', why: 'revert' };
  if (f.running !== f.boot.defaultImage) return { kind: 'revert', reason: 'rollback requested by hand' };
  // Applied (or half applied) but not rebooted: cancel it, the committed image stays.
  if (j.state === 'applying') return { kind: 'cancel-try' };
  const prev = rollbackTarget(j, f);
  if (!prev) return { kind: 'fail', code: 'NOT_FOUND', message: `No older image is installed to roll back to from ${f.running}.` };
  return { kind: 'rollback-committed', to: prev };
}

/** The journal's previous committed version when still installed, else the newest older installed image. */
export function rollbackTarget(j: Journal, f: DeviceFacts, compare: (a: string, b: string) => number = compareVersions): string | null {
  if (j.previous && j.previous !== f.running && f.installed.includes(j.previous)) return j.previous;
  const older = f.installed.filter((v) => f.running !== null && compare(v, f.running) < 0).sort(compare);
  return older.at(-1) ?? null;
}
