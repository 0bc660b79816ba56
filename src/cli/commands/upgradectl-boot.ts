import type { Command } from 'commander';
import { agentFor, withCommonOptions, printResult } from './upgradectl-common.js';

/** confirm, rollback, init: the boot state. */
export function registerBootCommands(program: Command): void {
  withCommonOptions(program.command('confirm'))
    .description('on a trial boot: run the health checks, commit on success, roll back and reboot on failure (run at boot by upgradectl-confirm.service)')
    .action(async (_o, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      printResult(await agent.confirm(), json, true);
    });

  withCommonOptions(program.command('rollback'))
    .description('go back to the previous image: leave a trial, cancel a pending trial, or re-commit the older installed image, then reboot')
    .action(async (_o, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      printResult(await agent.rollback(), json);
    });

  withCommonOptions(program.command('init'))
    .description('write a fresh boot environment naming an installed image as the default (first install or repair)')
    .requiredOption('--default <version>', 'the installed image to boot by default')
    .action(async (o: { default: string }, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      await agent.initBoot(o.default);
      if (json) process.stdout.write(JSON.stringify({ ok: true, default: o.default }) + '\n');
      else process.stdout.write(`boot environment written: default_image=${o.default}\n`);
    });
}
