import type { AgentContext } from './agent-context.js';
import { reportState } from './checkin.js';
import type { End } from './command-result.js';
import { flushEvents, queueUpgradeEvent } from './events.js';
import { runHealthChecks, type HealthResult } from './health.js';
import { withFailed } from './journal.js';
import { reboot } from './reboot.js';
import type { DeviceFacts } from './state-machine.js';

/**
 * How a trial boot ends: its health checks pass and it is committed, they fail (or a rollback
 * is asked for) and the device reverts to the old default, or GRUB already fell back by itself
 * and that is recorded. Each records its outcome in the journal and queues the event the
 * server hears; the state machine (state-machine.ts) decides which runs.
 */

/** The trial's health checks; failing ones revert. `end` is set when the run ends here. */
export async function checkTrialHealth(ctx: AgentContext, f: DeviceFacts): Promise<{ health?: HealthResult[]; end?: End }> {
  const { cfg, journal } = ctx;
  const running = f.running!;
  if (journal.j.target?.version !== running) {
    return {
      end: {
        outcome: 'not-trial',
        message:
          `${running} is running but is neither the committed default (${f.boot.defaultImage}) nor an upgrade this agent applied; ` +
          `not committing it. Reboot to return to ${f.boot.defaultImage}, or prepare and apply it.`,
      },
    };
  }
  await journal.record({ state: 'trial', step: null });
  const results = await runHealthChecks(cfg.health.checks, cfg.health.deadlineSeconds, cfg.pollSeconds, ctx.log);
  const failed = results.filter((r) => !r.ok);
  if (failed.length > 0) {
    const why = failed.map((r) => `${r.name}: ${r.detail}`).join('; ');
    return { health: results, end: await revertTrial(ctx, f, `health checks failed on ${running}: ${why}`, 'upgrade-failed') };
  }
  await journal.record({ step: 'health' });
  return { health: results };
}

export async function commitTrial(ctx: AgentContext, f: DeviceFacts): Promise<End> {
  const { journal } = ctx;
  const running = f.running!;
  await ctx.boot.commit(running);
  queueUpgradeEvent(journal, ctx.now(), 'upgrade-succeeded', journal.j.target?.fromVersion ?? journal.j.previous, running);
  await journal.record({ state: 'committed', step: 'commit', lastError: null, lastDefault: running, bootReport: null });
  await flushEvents(journal, ctx.server, ctx.log);
  await reportState(ctx);
  return { outcome: 'committed', message: `${running} passed its health checks and is now the committed default.` };
}

export async function revertTrial(ctx: AgentContext, f: DeviceFacts, reason: string, event: 'upgrade-failed' | 'rolled-back'): Promise<End> {
  const { journal } = ctx;
  // On a trial boot the default still names the old image; make sure nothing else is pending.
  const st = await ctx.boot.read();
  if (st.tryImage) await ctx.boot.clearTry();
  const code = event === 'upgrade-failed' ? 'HEALTH_CHECK_FAILED' : 'ROLLED_BACK';
  // An adopted machine's trial has no default to go back to: the reboot lands on what it came from (the conventional system).
  const backTo = st.defaultImage ?? journal.j.target?.fromVersion ?? null;
  queueUpgradeEvent(journal, ctx.now(), event, f.running, backTo, event === 'upgrade-failed' ? { code, message: reason } : undefined);
  await journal.record({
    state: 'rolled-back',
    step: 'revert',
    failedVersions: withFailed(journal.j, f.running),
    lastError: event === 'upgrade-failed' ? { code, message: reason, at: ctx.now().toISOString() } : journal.j.lastError,
  });
  ctx.log(reason);
  const r = await reboot(ctx, 'revert');
  return { outcome: 'rolled-back', message: `${reason}. ${r.message}` };
}

/** GRUB already fell back to the old default by itself (the trial never confirmed): record and report it. */
export async function recordFallback(ctx: AgentContext, f: DeviceFacts): Promise<End> {
  const { journal } = ctx;
  const t = journal.j.target?.version ?? null;
  const msg = `The trial boot of ${t} did not confirm; the device came back on ${f.running} by itself.`;
  queueUpgradeEvent(journal, ctx.now(), 'rolled-back', t, f.running, { code: 'HEALTH_CHECK_FAILED', message: msg });
  const lastError = { code: 'HEALTH_CHECK_FAILED', message: msg, at: ctx.now().toISOString() };
  await journal.record({ state: 'rolled-back', step: 'revert', failedVersions: withFailed(journal.j, t), lastError });
  await flushEvents(journal, ctx.server, ctx.log);
  await reportState(ctx);
  return { outcome: 'rolled-back', message: msg };
}
