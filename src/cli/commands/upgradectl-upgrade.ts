import type { Command } from 'commander';
import { agentFor, withCommonOptions, printResult } from './upgradectl-common.js';

/** check, prepare, apply: the upgrade's way in. */
export function registerUpgradeCommands(program: Command): void {
  withCommonOptions(program.command('check'))
    .description('check in with the server once and print its answer (target, window, delta readiness)')
    .action(async (_o, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      const r = await agent.check();
      if (json) process.stdout.write(JSON.stringify({ ok: true, ...r }) + '\n');
      else
        process.stdout.write(
          r.target
            ? `upgrade available: ${r.target.version}${r.target.mandatory ? ' (mandatory)' : ''}; delta ${r.deltaReady ? 'ready' : 'not ready'}\n`
            : 'up to date\n',
        );
    });

  withCommonOptions(program.command('prepare'))
    .description('download, verify and install the next image (or --version V) without touching the boot state; resumable')
    .option('--version <v>', 'prepare this version instead of asking the server')
    .action(async (o: { version?: string }, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      printResult(await agent.prepare(o.version), json);
    });

  withCommonOptions(program.command('apply'))
    .description('migrate configuration into the prepared image, set it to boot once, reboot')
    .option('--now', 'ignore the maintenance window and the reboot lease')
    .option('--force', 'also ignore inhibitors (a backup running...)')
    .action(async (o: { now?: boolean; force?: boolean }, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      printResult(await agent.apply({ now: o.now || o.force, force: o.force }), json);
    });
}
