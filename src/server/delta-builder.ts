import { spawn } from 'node:child_process';
import type { FastifyBaseLogger } from 'fastify';
import { IbuError } from '../errors.js';

export interface DeltaBuildRequest {
  from: string;
  to: string;
  /** Where to write the delta: a unique `.partial` in the cache; the pool renames it when done. */
  out: string;
  /** Aborted on shutdown: stop, the job goes back to the queue. */
  signal: AbortSignal;
  log: FastifyBaseLogger;
}

/**
 * Builds one delta. The server's default runs the heavy work in child processes
 * (src/server/store-delta-builder.ts); tests inject others. Throwing marks the attempt failed.
 */
export type DeltaBuilder = (req: DeltaBuildRequest) => Promise<void>;

export interface ChildOptions {
  signal?: AbortSignal;
  /** Grace period between SIGTERM and SIGKILL when aborted. */
  killAfterMs?: number;
  env?: NodeJS.ProcessEnv;
}

/**
 * Runs a child process to completion. The child gets an IPC channel so that it can notice its
 * parent dying (the 'disconnect' event) and exit instead of writing on as an orphan; on abort it
 * gets SIGTERM, then SIGKILL. Stdout is returned; a failure carries the tail of stderr.
 */
export function runChild(cmd: string, args: readonly string[], opts: ChildOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(new IbuError('INTERNAL', `not started: ${cmd} (shutting down)`));
      return;
    }
    // Its own process group (detached: setsid), so a kill reaches the tools it runs (zstd) too.
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env: opts.env ?? process.env, detached: true });
    const killGroup = (sig: NodeJS.Signals): void => {
      try {
        if (child.pid) process.kill(-child.pid, sig);
      } catch {
        child.kill(sig); // the group is gone already
      }
    };
    const out: Buffer[] = [];
    let err = '';
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => {
      err = (err + d.toString('utf8')).slice(-4000);
    });
    // The parent never talks to the child over IPC; an error on a closing channel is harmless.
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(new IbuError(e.code === 'ENOENT' ? 'TOOL_MISSING' : 'TOOL_FAILED', `${cmd}: ${e.message}`, { cause: e }));
    });
    let killTimer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), opts.killAfterMs ?? 5000);
      killTimer.unref();
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('close', (code, sig) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else {
        const why = sig ? `killed by ${sig}` : `exit ${code}`;
        reject(new IbuError('TOOL_FAILED', `${cmd} ${args.join(' ')} failed (${why}): ${err.trim().split('\n').slice(-5).join(' | ')}`));
      }
    });
  });
}
