import { spawn, type SpawnOptions } from 'node:child_process';
import { IbuError } from '../errors.js';

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions extends SpawnOptions {
  /** Data written to the child's stdin. */
  input?: string | Uint8Array;
  /** Resolve with a non-zero exit status instead of throwing. */
  allowFailure?: boolean;
}

/**
 * Runs a system tool (mke2fs, e2fsck, rsync, ...) without a shell. A missing tool becomes
 * TOOL_MISSING, a non-zero exit TOOL_FAILED with the tool's stderr in the message.
 */
export function run(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const { input, allowFailure, ...spawnOpts } = opts;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...spawnOpts });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr?.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        reject(new IbuError('TOOL_MISSING', `${cmd} is not installed (run scripts/install-deps.sh)`, { cause: e }));
      } else {
        reject(new IbuError('TOOL_FAILED', `${cmd}: ${e.message}`, { cause: e }));
      }
    });
    child.on('close', (code, signal) => {
      const res = { code: code ?? 128, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
      if (res.code !== 0 && !allowFailure) {
        const why = signal ? `killed by ${signal}` : `exit ${res.code}`;
        reject(new IbuError('TOOL_FAILED', `${cmd} ${args.join(' ')} failed (${why}): ${res.stderr.trim().slice(-2000)}`, { details: { ...res } }));
        return;
      }
      resolve(res);
    });
    if (child.stdin) {
      child.stdin.on('error', () => {});
      if (input !== undefined) child.stdin.end(input);
      else child.stdin.end();
    }
  });
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}
