import { Worker } from 'node:worker_threads';
import { IbuError, ERROR_CODES, type ErrorCode } from '../errors.js';
import type { ImageFacts } from './file-map.js';

type Job = { kind: 'sha256'; image: string } | { kind: 'facts'; image: string; requireKernel: boolean };

/** Runs a publish side job (publish-worker.ts) on a worker thread; errors keep their IbuError code. */
export function runSideJob(job: { kind: 'sha256'; image: string }): Promise<string>;
export function runSideJob(job: { kind: 'facts'; image: string; requireKernel: boolean }): Promise<ImageFacts>;
export function runSideJob(job: Job): Promise<unknown> {
  const ts = import.meta.url.endsWith('.ts');
  const url = new URL(ts ? './publish-worker.ts' : './publish-worker.js', import.meta.url);
  // Under tsx the worker registers the TypeScript loader itself; execArgv: [] keeps a parent's
  // `-e CODE` from running in the worker.
  const w = ts
    ? new Worker(`import('tsx/esm/api').then((t) => { t.register(); return import(${JSON.stringify(url.href)}); });`, {
        eval: true,
        workerData: job,
        execArgv: [],
      })
    : new Worker(url, { workerData: job, execArgv: [] });
  return new Promise((resolve, reject) => {
    let settled = false;
    w.once('message', (m: { ok: boolean; value?: unknown; code?: string; message?: string }) => {
      settled = true;
      void w.terminate();
      if (m.ok) resolve(m.value);
      else {
        const code = (ERROR_CODES as readonly string[]).includes(m.code ?? '') ? (m.code as ErrorCode) : 'INTERNAL';
        reject(new IbuError(code, m.message ?? 'publish worker failed'));
      }
    });
    w.once('error', (err) => {
      if (!settled) reject(err);
    });
    w.once('exit', (c) => {
      if (!settled) reject(new IbuError('INTERNAL', `publish worker exited with status ${c} before answering`));
    });
  });
}
