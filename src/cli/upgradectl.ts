import { Command } from 'commander';
import { runProgram } from './run.js';

export function buildProgram(): Command {
  const program = new Command('upgradectl')
    .description('upgradectl: the ibu device agent (prepare, apply, confirm, rollback)')
    .version('0.1.0');
  return program;
}

export async function main(argv: string[]): Promise<void> {
  await runProgram(buildProgram(), argv);
}
