import { IbuError, isIbuError } from '../errors.js';
import type { MaintenanceWindow } from '../fleet/protocol.js';
import type { AgentContext } from './agent-context.js';
import { checkIn } from './checkin.js';
import type { RebootMethodSetting } from './reboot-method.js';
import { waitForInhibitors } from './inhibitors.js';
import { inWindow, nextOpening } from './window.js';

export interface ApplyOptions {
  /** Ignore the maintenance window and the reboot lease. */
  now?: boolean;
  /** Do not wait for inhibitors. */
  force?: boolean;
  /** Overrides reboot.method for this apply (`upgradectl apply --method M`). */
  method?: RebootMethodSetting;
}

/**
 * What must hold before apply touches anything: a reboot lease from the server, the maintenance
 * window (the server's, else the local config's), no inhibitor active. Throws INHIBITED or
 * NOT_IN_WINDOW (policy answers, not failures). An unreachable server falls back to the local config.
 */
export async function checkApplyGates(ctx: AgentContext, opts: ApplyOptions): Promise<void> {
  let window: MaintenanceWindow | null = ctx.cfg.window;
  if (ctx.server) {
    try {
      const r = await checkIn(ctx, await ctx.facts(), true);
      if (!window && r) window = r.window;
      if (r && !r.rebootLease.granted && !opts.now) {
        throw new IbuError(
          'INHIBITED',
          'The server has not granted a reboot lease yet (too many devices of this group are rebooting); apply runs again later.',
        );
      }
    } catch (err) {
      if (isIbuError(err, 'INHIBITED')) throw err;
      ctx.log(`could not ask the server for the window and a reboot lease (${(err as Error).message}); using the local config`);
    }
  }
  const now = ctx.now();
  if (!opts.now && !inWindow(window, now)) {
    const next = window ? nextOpening(window, now) : null;
    const when = next?.toISOString() ?? 'an unknown time';
    throw new IbuError('NOT_IN_WINDOW', `Not inside the maintenance window (${window!.timeZone}); it opens next at ${when}. Run again then, or use --now.`, {
      details: { nextOpening: next?.toISOString() ?? null },
    });
  }
  if (!opts.force) await waitForInhibitors(ctx.cfg.inhibitors, ctx.cfg.inhibitorWaitSeconds, ctx.cfg.pollSeconds, ctx.log);
}
