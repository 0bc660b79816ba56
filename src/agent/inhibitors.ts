import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';
import type { Inhibitor } from './config.js';

export interface InhibitorState {
  name: string;
  busy: boolean;
  why: string;
}

/** Asks every inhibitor once: a lock file that exists, or a command that exits non-zero, means busy. */
export async function checkInhibitors(list: Inhibitor[], commandTimeoutMs = 30_000): Promise<InhibitorState[]> {
  return Promise.all(
    list.map(async (inh): Promise<InhibitorState> => {
      if (inh.lockFile) {
        const present = await fsp.access(inh.lockFile).then(
          () => true,
          () => false,
        );
        if (present) return { name: inh.name, busy: true, why: `lock file ${inh.lockFile} exists` };
      }
      if (inh.command) {
        const res = await runWithTimeout(inh.command, commandTimeoutMs);
        if (res !== 0) return { name: inh.name, busy: true, why: `${inh.command.join(' ')} exited ${res}` };
      }
      return { name: inh.name, busy: false, why: 'idle' };
    }),
  );
}

export async function runWithTimeout(argv: string[], timeoutMs: number): Promise<number | string> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), timeoutMs);
  try {
    const r = await run(argv[0]!, argv.slice(1), { allowFailure: true, signal: ac.signal, killSignal: 'SIGKILL' });
    return r.code;
  } catch (err) {
    if (ac.signal.aborted) return `timed out after ${timeoutMs / 1000} s`;
    return (err as Error).message;
  } finally {
    clearTimeout(t);
  }
}

/**
 * Waits while any inhibitor is busy, polling, up to the deadline; then INHIBITED naming who is
 * busy. The caller (apply) runs before anything irreversible, so giving up leaves nothing half done.
 */
export async function waitForInhibitors(list: Inhibitor[], waitSeconds: number, pollSeconds: number, log: (s: string) => void): Promise<void> {
  if (list.length === 0) return;
  const deadline = Date.now() + waitSeconds * 1000;
  for (;;) {
    const states = await checkInhibitors(list);
    const busy = states.filter((s) => s.busy);
    if (busy.length === 0) return;
    const what = busy.map((b) => `${b.name} (${b.why})`).join(', ');
    if (Date.now() + pollSeconds * 1000 > deadline) {
      throw new IbuError(
        'INHIBITED',
        `The upgrade is held back by ${what}; waited ${waitSeconds} s. It will be applied on a later run once they are idle (or raise inhibitorWaitSeconds).`,
        { details: { busy } },
      );
    }
    log(`waiting: ${what}`);
    await new Promise((r) => setTimeout(r, pollSeconds * 1000));
  }
}
