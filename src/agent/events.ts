import { IbuError } from '../errors.js';
import type { DeviceEvent, DeviceEventType } from '../fleet/protocol.js';
import type { JournalFile } from './journal.js';
import type { ServerClient } from './server-client.js';

/** Queues an event in the journal; it is delivered by flushEvents, now or on a later run. */
export function queueEvent(
  jf: JournalFile,
  at: Date,
  type: DeviceEventType,
  from: string | null,
  to: string | null,
  error?: { code: string; message: string },
): void {
  jf.j.pendingEvents.push({ type, fromVersion: from ?? 'unknown', toVersion: to ?? 'unknown', at: at.toISOString(), ...(error ? { error } : {}) });
}

/** Queues an event of the upgrade the journal follows; its results say how the trial was entered (reboot, kexec, soft-reboot). */
export function queueUpgradeEvent(...args: Parameters<typeof queueEvent>): void {
  queueEvent(...args);
  const [jf, , type] = args;
  const method = jf.j.switch?.method;
  if (method && type !== 'apply-started' && type !== 'prepare-failed') jf.j.pendingEvents.at(-1)!.method = method;
}

/**
 * Whether the server refused the event itself (400, 413, 422: its body can never be accepted as
 * it is), not the moment (no network, 5xx, 429) nor the device (401/403: a token can be fixed).
 */
function refusedForGood(err: unknown): boolean {
  const status = err instanceof IbuError ? err.details?.status : undefined;
  return status === 400 || status === 413 || status === 422;
}

/**
 * Delivers queued events in order; what fails stays queued (with everything after it) for the
 * next run. An event the server refuses for good is dropped with a log line: kept, it would hold
 * every later event back forever (a device that fell back would never say so).
 */
export async function flushEvents(jf: JournalFile, server: ServerClient | null, log: (line: string) => void): Promise<void> {
  if (!server || jf.j.pendingEvents.length === 0) return;
  const left: DeviceEvent[] = [];
  for (const ev of jf.j.pendingEvents) {
    if (left.length > 0) {
      left.push(ev);
      continue;
    }
    try {
      await server.event(ev);
    } catch (err) {
      if (refusedForGood(err)) {
        log(`dropped the ${ev.type} event (${ev.fromVersion} -> ${ev.toVersion}): the server refuses it for good (${(err as Error).message})`);
        continue;
      }
      log(`could not report ${ev.type} to the server (${(err as Error).message}); will retry`);
      left.push(ev);
    }
  }
  if (left.length !== jf.j.pendingEvents.length) {
    jf.j.pendingEvents = left;
    await jf.save();
  }
}
