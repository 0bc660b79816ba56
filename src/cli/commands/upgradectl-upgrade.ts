import type { Command } from 'commander';
import { IbuError } from '../../errors.js';
import { REBOOT_METHOD_SETTINGS, type RebootMethodSetting } from '../../agent/reboot-method.js';
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
    .description('migrate configuration into the prepared image, set it to boot once, reboot (or kexec / soft-reboot: --method)')
    .option('--now', 'ignore the maintenance window and the reboot lease')
    .option('--force', 'also ignore inhibitors (a backup running...)')
    .option('--method <m>', `how to switch into the new image: ${REBOOT_METHOD_SETTINGS.join(', ')} (default: reboot.method)`)
    .action(async (o: { now?: boolean; force?: boolean; method?: string }, cmd: Command) => {
      if (o.method !== undefined && !REBOOT_METHOD_SETTINGS.includes(o.method as RebootMethodSetting))
        throw new IbuError('USAGE', `--method must be one of ${REBOOT_METHOD_SETTINGS.join(', ')}, got '${o.method}'.`);
      const { agent, json } = await agentFor(cmd);
      printResult(await agent.apply({ now: o.now || o.force, force: o.force, method: o.method as RebootMethodSetting | undefined }), json);
    });
}
