import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../../src/cli/ibu.js', import.meta.url));

export interface CliResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs `ibu ARGS` in a child process (with the same loader flags when run under tsx). */
export function runIbu(args: string[], env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, ibuCommand(args).slice(1), { env: { ...process.env, ...env }, maxBuffer: 1 << 30 });
  return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr.toString('utf8') };
}

/** argv (node first) that runs `ibu ARGS`, for use in shell pipelines. */
export function ibuCommand(args: string[]): string[] {
  return [
    process.execPath,
    ...process.execArgv,
    '--input-type=module',
    '-e',
    `import(${JSON.stringify(cli)}).then((m) => m.main(process.argv.slice(1)))`,
    ...args,
  ];
}
