import { appendFileSync } from 'node:fs';
import { PerformanceObserver, constants } from 'node:perf_hooks';

const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

/**
 * Diagnostics for the simulator (`IBU_SIM_TRACE=<file>`): every garbage collection of 5 ms or
 * more and every event-loop stall of 30 ms or more in this process, one JSON line each with the
 * wall-clock time (epoch ms), so the server's and the simulator's lines can be laid beside the
 * latency they caused. Off unless asked: the observer costs a little per GC.
 */
export function traceStalls(file: string | undefined, who: string): () => void {
  if (!file) return () => {};
  const out = (o: object) => appendFileSync(file, JSON.stringify({ who, pid: process.pid, ...o }) + '\n');
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (e.duration < 5) continue;
      const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind ?? -1;
      out({ at: Math.round(performance.timeOrigin + e.startTime), gc: GC_KINDS[kind] ?? String(kind), ms: Math.round(e.duration * 10) / 10 });
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  // A 10 ms tick that fires late by 30 ms or more: the loop was busy (or starved) that long.
  let last = performance.now();
  const tick = setInterval(() => {
    const now = performance.now();
    const late = now - last - 10;
    if (late >= 30)
      out({ at: Math.round(performance.timeOrigin + last), stallMs: Math.round(late), heapMiB: Math.round(process.memoryUsage().heapUsed / 2 ** 20) });
    last = now;
  }, 10);
  tick.unref();
  return () => {
    obs.disconnect();
    clearInterval(tick);
  };
}
