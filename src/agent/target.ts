import { IbuError } from '../errors.js';
import { assertVersion, compareVersions } from '../version.js';
import type { AgentContext } from './agent-context.js';
import { checkIn } from './checkin.js';
import type { End } from './command-result.js';
import type { DeviceFacts } from './state-machine.js';

/**
 * Picks the version to prepare: the one asked for, else the server's target at check-in. Refuses
 * downgrades, does not retry by itself a version whose trial failed here, and fetches the signed
 * manifest before anything is recorded. Ends the run when there is nothing to prepare.
 */
export async function resolveTarget(ctx: AgentContext, f: DeviceFacts, wanted: string | undefined): Promise<End | void> {
  const j = ctx.journal.j;
  let target = wanted;
  if (target === undefined) {
    const r = await checkIn(ctx, f);
    if (!r && !ctx.server) throw new IbuError('USAGE', 'No server is configured; pass --version VERSION to prepare a specific release.');
    target = r?.target?.version;
    if (!target) return { outcome: 'up-to-date', message: `The server has no upgrade for ${f.running ?? 'this device'}.` };
    // An unattended device must not loop through the same failing trial.
    if (j.failedVersions?.includes(target)) {
      return {
        outcome: 'up-to-date',
        message: `${target} failed its trial boot on this device before; not retrying it by itself (run 'upgradectl prepare --version ${target}' to retry).`,
      };
    }
  }
  assertVersion(target);
  if (f.running && target === f.running) return { outcome: 'up-to-date', message: `${target} is already running.` };
  if (f.running && compareVersions(target, f.running) < 0) {
    throw new IbuError(
      'VERSION_DOWNGRADE',
      `Refusing to prepare ${target}: it is older than the running ${f.running}. Use 'upgradectl rollback' to go back to an installed image.`,
    );
  }
  await ctx.manifests.fetch(target);
  const prev = j.target?.version;
  if (prev && prev !== target && j.state === 'preparing') ctx.log(`switching the prepared target from ${prev} to ${target}`);
  if (f.installed.includes(target)) {
    await ctx.journal.record({ state: 'prepared', step: null, target: { version: target, fromVersion: f.running }, lastError: null });
    return;
  }
  await ctx.journal.record({ state: 'preparing', step: 'resolve-target', target: { version: target, fromVersion: f.running }, lastError: null });
}
