import { Command } from 'commander';
import { IBU_VERSION } from '../util/package-version.js';
import { runProgram } from './run.js';

/**
 * Each top-level command's module, loaded when needed: a run of one command does not pay for the
 * others' dependencies (the AWS SDK, undici, Fastify, pg). Loading them all cost `ibu delta apply`
 * ~30 MiB of RSS it never used (86 MiB for the CLI against 56 MiB for the delta library alone).
 */
const COMMANDS: Record<string, () => Promise<(program: Command) => void>> = {
  image: async () => (await import('./commands/image.js')).registerImageCommands,
  keys: async () => (await import('./commands/keys.js')).registerKeysCommands,
  release: async () => (await import('./commands/release.js')).registerReleaseCommands,
  delta: async () => (await import('./commands/delta.js')).registerDeltaCommands,
  serve: async () => (await import('./commands/serve.js')).registerServeCommands,
  fleet: async () => (await import('./commands/fleet.js')).registerFleetCommands,
  rollout: async () => (await import('./commands/rollout.js')).registerRolloutCommands,
  zfs: async () => (await import('./commands/zfs.js')).registerZfsCommands,
  build: async () => (await import('./commands/build.js')).registerBuildCommands,
};

/** The program with the command `argv` names, or with every command (help, a misspelt name, no arguments). */
export async function buildProgram(argv: string[] = []): Promise<Command> {
  const program = new Command('ibu')
    .description('ibu: image-based upgrades for fleets of Linux appliances')
    .version(IBU_VERSION)
    // `--version` after a subcommand is that command's option (image build, release publish).
    .enablePositionalOptions();
  const first = argv[0];
  const names = first !== undefined && Object.hasOwn(COMMANDS, first) ? [first] : Object.keys(COMMANDS);
  for (const name of names) (await COMMANDS[name]!())(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  await runProgram(await buildProgram(argv), argv);
}
