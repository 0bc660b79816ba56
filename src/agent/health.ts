import { setTimeout as sleep } from 'node:timers/promises';
import type { HealthCheck } from './config.js';
import { runWithTimeout } from './inhibitors.js';

export interface HealthResult {
  name: string;
  ok: boolean;
  detail: string;
  attempts: number;
}

async function once(c: HealthCheck): Promise<{ ok: boolean; detail: string }> {
  const ms = c.timeoutSeconds * 1000;
  if (c.command) {
    const r = await runWithTimeout(c.command, ms);
    return r === 0 ? { ok: true, detail: 'exit 0' } : { ok: false, detail: typeof r === 'number' ? `exit ${r}` : r };
  }
  try {
    const res = await fetch(c.url!, { signal: AbortSignal.timeout(ms), redirect: 'manual' });
    await res.body?.cancel().catch(() => undefined); // only the status counts: never read a body of unknown size
    const want = c.expectStatus ?? 200;
    return res.status === want ? { ok: true, detail: `HTTP ${res.status}` } : { ok: false, detail: `HTTP ${res.status}, expected ${want}` };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  }
}

/**
 * Runs every check until it passes or the overall deadline passes: services may still be starting
 * right after boot, so a failing check is retried every `pollSeconds`. All checks must pass. A
 * check with `retry: false` answers once; its failure is final and the others stop retrying.
 */
export async function runHealthChecks(
  checks: HealthCheck[],
  deadlineSeconds: number,
  pollSeconds: number,
  log: (s: string) => void = () => {},
): Promise<HealthResult[]> {
  const deadline = Date.now() + deadlineSeconds * 1000;
  let failedFor: string | null = null;
  // Wakes the retrying checks' sleeps when a final failure settles the outcome.
  const settled = new AbortController();
  return Promise.all(
    checks.map(async (c): Promise<HealthResult> => {
      let attempts = 0;
      for (;;) {
        attempts++;
        const r = await once(c);
        if (r.ok) return { name: c.name, ok: true, detail: r.detail, attempts };
        if (c.retry === false) {
          failedFor ??= c.name;
          settled.abort();
          return { name: c.name, ok: false, detail: r.detail, attempts };
        }
        if (failedFor !== null) return { name: c.name, ok: false, detail: `${r.detail} (not retried: ${failedFor} failed for good)`, attempts };
        if (Date.now() + pollSeconds * 1000 >= deadline) return { name: c.name, ok: false, detail: r.detail, attempts };
        log(`health check ${c.name}: ${r.detail}; retrying`);
        await sleep(pollSeconds * 1000, undefined, { signal: settled.signal }).catch(() => undefined);
      }
    }),
  );
}
