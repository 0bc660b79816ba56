import { run } from '../util/exec.js';
import type { AgentContext } from './agent-context.js';
import type { End } from './command-result.js';
import { flushEvents } from './events.js';

/**
 * Records the reboot step (for an apply), reports what is queued, and runs the configured reboot
 * command. A clean reboot ends this process; if it is still alive `forceAfterSeconds` later,
 * something hangs and the force command runs.
 */
export async function reboot(ctx: AgentContext, why: 'apply' | 'revert'): Promise<End> {
  if (ctx.journal.j.step !== 'reboot' && why === 'apply') await ctx.journal.record({ step: 'reboot' });
  await flushEvents(ctx.journal, ctx.server, ctx.log).catch(() => {});
  const { command, forceCommand, forceAfterSeconds } = ctx.cfg.reboot;
  ctx.log(`rebooting: ${command.join(' ')}`);
  await run(command[0]!, command.slice(1), { allowFailure: true });
  if (forceAfterSeconds > 0) {
    await new Promise((r) => setTimeout(r, forceAfterSeconds * 1000));
    ctx.log(`still running ${forceAfterSeconds} s after '${command.join(' ')}'; forcing: ${forceCommand.join(' ')}`);
    await run(forceCommand[0]!, forceCommand.slice(1), { allowFailure: true });
  }
  const target = ctx.journal.j.target?.version;
  return { outcome: 'rebooting', message: why === 'apply' ? `Rebooting into ${target} for a trial boot.` : 'Rebooting into the committed image.' };
}
