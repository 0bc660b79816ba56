import { Command } from 'commander';
import { IBU_VERSION } from '../util/package-version.js';
import { runProgram } from './run.js';
import { registerImageCommands } from './commands/image.js';
import { registerKeysCommands } from './commands/keys.js';
import { registerReleaseCommands } from './commands/release.js';
import { registerDeltaCommands } from './commands/delta.js';
import { registerServeCommands } from './commands/serve.js';
import { registerFleetCommands } from './commands/fleet.js';
import { registerRolloutCommands } from './commands/rollout.js';
import { registerZfsCommands } from './commands/zfs.js';
import { registerBuildCommands } from './commands/build.js';

export function buildProgram(): Command {
  const program = new Command('ibu')
    .description('ibu: image-based upgrades for fleets of Linux appliances')
    .version(IBU_VERSION)
    // `--version` after a subcommand is that command's option (image build, release publish).
    .enablePositionalOptions();
  registerImageCommands(program);
  registerKeysCommands(program);
  registerReleaseCommands(program);
  registerDeltaCommands(program);
  registerServeCommands(program);
  registerFleetCommands(program);
  registerRolloutCommands(program);
  registerZfsCommands(program);
  registerBuildCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  await runProgram(buildProgram(), argv);
}
