import type { CheckinResponse } from '../fleet/protocol.js';
import type { AgentContext } from './agent-context.js';
import { freeBytes } from './disk-policy.js';
import type { DeviceFacts } from './state-machine.js';

/** One check-in: what the device runs and where it stands; the server answers with a target, a window and a lease. */
export async function checkIn(ctx: AgentContext, f: DeviceFacts, wantRebootLease = false): Promise<CheckinResponse | null> {
  if (!ctx.server) return null;
  const j = ctx.journal.j;
  const free = await freeBytes(ctx.cfg.imagesDir).catch(() => undefined);
  return ctx.server.checkin({
    version: f.running ?? 'unknown',
    state: j.state,
    trial: f.running !== null && f.running !== f.boot.defaultImage,
    committedVersion: f.boot.defaultImage ?? undefined,
    preparedVersion: j.state === 'prepared' ? j.target?.version : undefined,
    freeBytes: free,
    lastError: j.lastError ? { code: j.lastError.code, message: j.lastError.message } : null,
    wantRebootLease,
  });
}

/** A best-effort check-in so the server sees the new version and state at once (not at the next timer run). */
export async function reportState(ctx: AgentContext): Promise<void> {
  if (!ctx.server) return;
  try {
    await checkIn(ctx, await ctx.facts());
  } catch (err) {
    ctx.log(`could not check in (${(err as Error).message}); the next run will`);
  }
}
