import { Command, CommanderError } from 'commander';
import { IbuError } from '../errors.js';
import { EXIT, exitCodeFor } from './exit-codes.js';

/**
 * Runs a commander program and is the single place that turns errors into exit statuses:
 * `error[CODE]: message` on stderr (or a JSON object with --json), then the mapped status.
 */
export async function runProgram(program: Command, argv: string[]): Promise<void> {
  overrideExits(program);
  program.configureOutput({ writeErr: (s) => process.stderr.write(s) });
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    process.exitCode = reportError(err, argv.includes('--json'));
  }
}

/** Commander copies exitOverride only into subcommands created after it; set it on every level. */
function overrideExits(cmd: Command): void {
  cmd.exitOverride();
  for (const c of cmd.commands) overrideExits(c);
}

export function reportError(err: unknown, json: boolean): number {
  if (err instanceof CommanderError) {
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return EXIT.OK;
    return EXIT.USAGE;
  }
  const e = err instanceof IbuError ? err : new IbuError('INTERNAL', (err as Error)?.stack ?? String(err), { cause: err });
  if (json) {
    process.stdout.write(JSON.stringify({ error: { code: e.code, message: e.message, ...(e.details ? { details: e.details } : {}) } }) + '\n');
  }
  process.stderr.write(`error[${e.code}]: ${e.message}\n`);
  return exitCodeFor(e.code);
}

/** Parses a size such as 512M, 2G, 1048576 into bytes. */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]i?B?)?$/i.exec(s.trim());
  if (!m) throw new IbuError('USAGE', `not a size: '${s}' (use bytes or a suffix K, M, G, T)`);
  const mult: Record<string, number> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };
  const unit = m[2] ? m[2][0]!.toUpperCase() : '';
  return Math.floor(Number(m[1]) * (unit ? mult[unit]! : 1));
}
