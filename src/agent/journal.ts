import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../util/atomic.js';
import type { DeviceEvent, DeviceState } from '../fleet/protocol.js';
import { crashPoint } from './crash-point.js';
import { ImagesDir } from './images-dir.js';
import type { RebootMethod } from './reboot-method.js';

/**
 * The agent's journal, `<imagesDir>/.ibu/state.json`. It records intent and progress only; the
 * truth about what can boot is always re-read from the disk (images present, grubenv), so a
 * journal that is behind (a crash between an effect and its record) is harmless: every step
 * checks the facts before acting.
 */
export type StepName =
  // prepare
  | 'resolve-target'
  | 'reserve-space'
  | 'download'
  | 'verify'
  | 'fsck'
  | 'install'
  // apply
  | 'migrate'
  | 'checkpoint'
  | 'choose-method'
  | 'set-try'
  | 'load-switch'
  | 'reboot'
  // confirm / rollback
  | 'health'
  | 'commit'
  | 'revert';

/** A file's identity as stat gives it: a rename keeps it, a rewrite or a new file changes it. */
export interface StagedIdentity {
  ino: number;
  size: number;
  mtimeMs: number;
}

export interface Journal {
  format: 1;
  state: DeviceState;
  /** The last step completed in the current state. */
  step: StepName | null;
  /** The upgrade in progress (or last finished). */
  target: {
    version: string;
    fromVersion: string | null;
    method?: 'delta' | 'chunks' | 'local' | 'zfs';
    /**
     * The staged file a transport wrote after hashing it against the signed manifest (every
     * transport does): verify skips a second whole-image sha256 while the file is this very one.
     */
    staged?: StagedIdentity;
  } | null;
  /** The committed version before the upgrade: where a rollback goes. */
  previous: string | null;
  migration?: MigrationSummary;
  lastError: { code: string; message: string; at: string; step?: string } | null;
  /** Versions whose trial failed here: not prepared again unless asked for by --version. */
  failedVersions?: string[];
  /** Events not yet delivered to the server; sent on every run. */
  pendingEvents: DeviceEvent[];
  /** default_image as the agent last read it from a valid env: what a lost env is rebuilt with (boot-health.ts). */
  lastDefault?: string | null;
  /** The boot problem last reported (boot-health.ts), so one ongoing problem is one event. */
  bootReport?: string | null;
  /** How the trial of `target` is entered (apply's choose-method step; reboot-method.ts). */
  switch?: SwitchRecord | null;
  /** Steps a stuck reboot escalated through (reboot.ts), reported after the next boot. */
  escalation?: EscalationRecord | null;
  updatedAt: string;
}

export interface SwitchRecord {
  method: RebootMethod;
  reason: string;
  /** /proc/sys/kernel/random/boot_id when the switch was prepared: the same id later means it did not happen yet. */
  bootId: string | null;
}

export interface EscalationRecord {
  /** Why the device was rebooting (apply, revert). */
  why: 'apply' | 'revert';
  method: RebootMethod;
  from: string | null;
  to: string | null;
  bootId: string | null;
  /** Each step that ran, in order: the method's command, the forced reboot, sysrq b. */
  steps: Array<{ step: string; at: string }>;
}

export interface MigrationSummary {
  changed: Array<{ path: string; strategy: string; action: string; detail?: string }>;
}

export function emptyJournal(): Journal {
  return { format: 1, state: 'idle', step: null, target: null, previous: null, lastError: null, pendingEvents: [], updatedAt: new Date(0).toISOString() };
}

export function journalPath(imagesDir: string): string {
  return new ImagesDir(imagesDir).journal;
}

const STATES: readonly DeviceState[] = ['idle', 'preparing', 'prepared', 'applying', 'trial', 'committed', 'rolled-back', 'failed'];

export interface JournalRead {
  journal: Journal;
  /** Set when the file was unreadable and moved aside (the agent then starts from the facts). */
  recovered?: string;
}

/**
 * Reads the journal. A missing file is a fresh device. A damaged one (it cannot be torn by our
 * writes, but disks do fail) is moved aside and the agent starts from the facts on disk, because
 * an unattended device must not stop upgrading over a bookkeeping file.
 */
export async function readJournal(imagesDir: string): Promise<JournalRead> {
  const file = journalPath(imagesDir);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { journal: emptyJournal() };
    throw err;
  }
  const problem = checkJournal(text);
  if (problem === null) return { journal: JSON.parse(text) as Journal };
  const aside = `${file}.damaged-${Date.now()}`;
  await fsp.rename(file, aside).catch(() => {});
  const j = emptyJournal();
  j.lastError = {
    code: 'JOURNAL_INVALID',
    message: `The journal ${file} was unreadable (${problem}); it was moved to ${aside} and the agent restarted from the state on disk.`,
    at: new Date().toISOString(),
  };
  return { journal: j, recovered: aside };
}

function checkJournal(text: string): string | null {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (err) {
    return `not JSON: ${(err as Error).message}`;
  }
  const o = j as Partial<Journal>;
  if (!o || typeof o !== 'object') return 'not an object';
  if (o.format !== 1) return `unknown format ${String(o.format)}`;
  if (!STATES.includes(o.state as DeviceState)) return `unknown state ${String(o.state)}`;
  if (!Array.isArray(o.pendingEvents)) return 'pendingEvents is not a list';
  if (o.target !== null && (typeof o.target !== 'object' || typeof o.target?.version !== 'string')) return 'target is malformed';
  return null;
}

/** Every state change: temp file, fsync, rename, fsync dir. */
export async function writeJournal(imagesDir: string, j: Journal): Promise<void> {
  const file = journalPath(imagesDir);
  await fsp.mkdir(path.dirname(file), { recursive: true });
  j.updatedAt = new Date().toISOString();
  await writeFileAtomic(file, JSON.stringify(j, null, 2) + '\n');
}

/**
 * The journal of one agent run, in memory and on disk: `record` applies a patch and writes it
 * durably before the run goes on, so what is recorded is what happened (or a step behind).
 */
export class JournalFile {
  j: Journal = emptyJournal();
  constructor(readonly imagesDir: string) {}

  /** Reads the journal; a damaged one was moved aside, which is logged and recorded at once. */
  async load(log: (line: string) => void): Promise<void> {
    const r = await readJournal(this.imagesDir);
    this.j = r.journal;
    if (r.recovered) {
      log(r.journal.lastError!.message);
      await this.save();
    }
  }

  save(): Promise<void> {
    return writeJournal(this.imagesDir, this.j);
  }

  /** Records a completed step (or a new state) durably; the crash harness kills around it. */
  async record(patch: Partial<Journal>): Promise<void> {
    // A kill here: the effect happened but is not recorded. (A kill right after the record is the
    // same boundary as the next step's crash point.)
    crashPoint(`before-record ${patch.state ?? ''}${patch.step ?? ''}`);
    Object.assign(this.j, patch);
    await this.save();
  }
}

/** The journal's list of versions whose trial failed, with `v` added (the last 20 kept). */
export function withFailed(j: Journal, v: string | null | undefined): string[] {
  const list = j.failedVersions ?? [];
  return v && !list.includes(v) ? [...list, v].slice(-20) : list;
}
