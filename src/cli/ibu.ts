import { Command } from 'commander';
import { runProgram } from './run.js';
import { registerImageCommands } from './commands/image.js';

export function buildProgram(): Command {
  const program = new Command('ibu')
    .description('ibu: image-based upgrades for fleets of Linux appliances')
    .version('0.1.0');
  registerImageCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  await runProgram(buildProgram(), argv);
}
