import type { Command } from 'commander';
import { IbuError } from '../../errors.js';
import type { RolloutView } from '../../fleet/fleet.js';
import { FleetAdminClient } from '../../fleet/admin-client.js';
import { addAdminOptions, count, type AdminFlags } from './admin-options.js';

function ratio(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!(n >= 0 && n <= 1)) throw new IbuError('USAGE', `${name} must be a number between 0 and 1, not '${v}'.`);
    return n;
  };
}
function id(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new IbuError('USAGE', `A rollout id is a positive integer, not '${v}'.`);
  return n;
}

export function formatRollout(r: RolloutView): string {
  const lines = [`rollout ${r.id}: ${r.channel} -> ${r.version}  ${r.state}${r.reason ? ` (${r.reason})` : ''}`];
  r.waves.forEach((w, i) => {
    const pct = w.devices ? ((100 * w.done) / w.devices).toFixed(1) : '0.0';
    lines.push(
      `  ${i === r.wave && r.state !== 'completed' ? '>' : ' '} wave ${i} ${w.label.padEnd(18)} ` +
        `${String(w.done).padStart(7)} / ${String(w.devices).padEnd(7)} ${pct}%${w.open ? '' : '  (not open)'}`,
    );
  });
  const c = r.counts;
  lines.push(
    `  targeted ${c.targeted}, applying ${c.applying}, trial ${c.trial}, succeeded ${c.succeeded}, ` +
      `failed ${c.failed}, rolled back ${c['rolled-back']}, silent ${c.silent}`,
  );
  return lines.join('\n');
}

function print(o: AdminFlags, value: unknown, text: () => string): void {
  process.stdout.write((o.json ? JSON.stringify(value) : text()) + '\n');
}

/** `ibu rollout ...`: staged rollouts through the server's admin API. */
export function registerRolloutCommands(program: Command): void {
  const rollout = program.command('rollout').description('staged rollouts on an ibu server (admin API, needs the admin token)');

  addAdminOptions(rollout.command('list').description('all rollouts with their waves and progress')).action(async (o: AdminFlags) => {
    const list = await FleetAdminClient.fromOptions(o).call<RolloutView[]>('GET', '/v1/admin/fleet/rollouts');
    print(o, list, () => (list.length ? list.map(formatRollout).join('\n') : 'no rollouts'));
  });

  addAdminOptions(rollout.command('show').argument('<id>', 'rollout id', id).description('one rollout')).action(async (rid: number, o: AdminFlags) => {
    const r = await FleetAdminClient.fromOptions(o).call<RolloutView>('GET', `/v1/admin/fleet/rollouts/${rid}`);
    print(o, r, () => formatRollout(r));
  });

  addAdminOptions(
    rollout
      .command('start')
      .description('start a staged rollout of a release known to the fleet')
      .requiredOption('--version <v>', 'release version')
      .option('--channel <name>', 'channel (default: the server default, stable)')
      .option('--waves <list>', 'cumulative percentages, e.g. 1,10,50,100')
      .option('--canary <groups>', 'comma-separated groups forming a first canary wave')
      .option('--success-ratio <r>', 'share of a wave on the release before the next opens (0-1)', ratio('--success-ratio'))
      .option('--max-failure-ratio <r>', 'pause when failed+rolled back+silent / started exceeds this (0-1)', ratio('--max-failure-ratio'))
      .option('--min-sample <n>', 'started devices needed before the ratio applies', count('--min-sample'))
      .option('--max-failures <n>', 'pause at this many bad devices regardless of ratio (0 = off)', count('--max-failures'))
      .option('--silent-after <seconds>', 'a device not back this long after applying counts as silent', count('--silent-after'))
      .option('--min-wave-seconds <seconds>', 'keep each wave open at least this long', count('--min-wave-seconds'))
      .option('--ramp <percent-per-minute>', "open each wave gradually: at most this % of the channel's devices newly offered per minute", count('--ramp')),
  ).action(
    async (
      o: AdminFlags & {
        version: string;
        channel?: string;
        waves?: string;
        canary?: string;
        successRatio?: number;
        maxFailureRatio?: number;
        minSample?: number;
        maxFailures?: number;
        silentAfter?: number;
        minWaveSeconds?: number;
        ramp?: number;
      },
    ) => {
      const spec: Record<string, unknown> = {};
      if (o.waves) {
        const waves = o.waves.split(',').map((s) => Number(s.trim()));
        if (waves.some((w) => !Number.isFinite(w)))
          throw new IbuError('USAGE', `--waves must be comma-separated percentages such as 1,10,50,100, not '${o.waves}'.`);
        spec.waves = waves;
      }
      if (o.canary)
        spec.canaryGroups = o.canary
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
      if (o.successRatio !== undefined) spec.successRatio = o.successRatio;
      if (o.maxFailureRatio !== undefined) spec.maxFailureRatio = o.maxFailureRatio;
      if (o.minSample !== undefined) spec.minSample = o.minSample;
      if (o.maxFailures !== undefined) spec.maxFailures = o.maxFailures;
      if (o.silentAfter !== undefined) spec.silentAfterSeconds = o.silentAfter;
      if (o.minWaveSeconds !== undefined) spec.minWaveSeconds = o.minWaveSeconds;
      if (o.ramp !== undefined) spec.rampPercentPerMinute = o.ramp;
      const r = await FleetAdminClient.fromOptions(o).call<RolloutView>('POST', '/v1/admin/fleet/rollouts', { version: o.version, channel: o.channel, spec });
      print(o, r, () => formatRollout(r));
    },
  );

  for (const verb of ['pause', 'resume', 'abort'] as const) {
    const cmd = rollout.command(verb).argument('<id>', 'rollout id', id).description(`${verb} a rollout`);
    if (verb !== 'resume') cmd.option('--reason <text>', 'why (shown on the dashboard)');
    addAdminOptions(cmd).action(async (rid: number, o: AdminFlags & { reason?: string }) => {
      const r = await FleetAdminClient.fromOptions(o).call<RolloutView>(
        'POST',
        `/v1/admin/fleet/rollouts/${rid}/${verb}`,
        o.reason ? { reason: o.reason } : {},
      );
      print(o, r, () => formatRollout(r));
    });
  }
}
