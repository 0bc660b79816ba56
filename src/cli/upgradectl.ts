import { Command } from 'commander';
import { IBU_VERSION } from '../util/package-version.js';
import { runProgram } from './run.js';
import { registerStatusCommand } from './commands/upgradectl-status.js';
import { registerUpgradeCommands } from './commands/upgradectl-upgrade.js';
import { registerBootCommands } from './commands/upgradectl-boot.js';
import { registerEnrollCommand } from './commands/upgradectl-enroll.js';
import { registerAdoptCommand } from './commands/upgradectl-adopt.js';

export function buildProgram(): Command {
  const program = new Command('upgradectl')
    .description('upgradectl: the ibu device agent (prepare, apply, confirm, rollback)')
    .version(IBU_VERSION)
    .enablePositionalOptions()
    // Set before the subcommands exist: commander copies it into each, so a bad option exits 2 (USAGE), not 1.
    .exitOverride()
    .option('--config <file>', 'agent config (default /etc/ibu/agent.json, or $IBU_AGENT_CONFIG)')
    .option('--json', 'machine-readable output: one JSON object on stdout');
  registerStatusCommand(program);
  registerUpgradeCommands(program);
  registerBootCommands(program);
  registerEnrollCommand(program);
  registerAdoptCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  await runProgram(buildProgram(), argv);
}
