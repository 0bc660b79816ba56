/** Latencies in 0.1 ms buckets up to 10 s, then 10 ms buckets up to 10 minutes: exact enough for p50/p99 at any count. */
export class LatencyHistogram {
  private buckets = new Uint32Array(100_000 + 59_001);
  count = 0;
  max = 0;
  add(ms: number): void {
    const i = ms < 10_000 ? Math.round(ms * 10) : 100_000 + Math.min(59_000, Math.round((ms - 10_000) / 10));
    this.buckets[i]!++;
    this.count++;
    if (ms > this.max) this.max = ms;
  }
  quantile(q: number): number {
    const want = Math.ceil(this.count * q);
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i]!;
      if (seen >= want && want > 0) return i < 100_000 ? i / 10 : 10_000 + (i - 100_000) * 10;
    }
    return 0;
  }
}

/**
 * What the simulation measures while it runs: check-in latency (from when a request was due),
 * check-ins per 10 s window of the traffic phase, counts. Check-ins that began while the server
 * restarts (and 5 s after) measure the restart, not steady service: they count only in `latAll`.
 */
export class Measurements {
  readonly lat = new LatencyHistogram();
  readonly latAll = new LatencyHistogram();
  /** Latency per phase of the release day (which wave is open, the restart, the bad release), by the phase a check-in was due in. */
  readonly phases = new Map<string, LatencyHistogram>();
  private phase = 'enrollment';
  readonly phaseAt: Array<{ at: number; name: string }> = [];
  readonly perWindow: number[] = [];
  trafficT0 = 0;
  disturbedFrom = Number.POSITIVE_INFINITY;
  disturbedUntil = 0;
  checkins = 0;
  events = 0;
  retries = 0;
  /** Check-ins over 50 ms by the wall-clock second they were due in (diagnostics: IBU_SIM_TRACE). */
  readonly slowBySecond = new Map<number, number>();

  /** From now on check-ins count in phase `name` (the operator's view: a wave opened, the restart began). */
  setPhase(name: string, at = performance.now()): void {
    if (name === this.phase) return;
    this.phase = name;
    this.phaseAt.push({ at, name });
  }

  /** The phase a time falls in (a check-in belongs to the phase it was due in, not the one it was answered in). */
  private phaseOf(t: number): string {
    for (let i = this.phaseAt.length - 1; i >= 0; i--) if (this.phaseAt[i]!.at <= t) return this.phaseAt[i]!.name;
    return 'enrollment';
  }

  /** A check-in answered at t1 that was due at t0 (performance.now() times). */
  checkinAnswered(t0: number, t1: number): void {
    const ms = t1 - t0;
    this.latAll.add(ms);
    const name = this.phaseOf(t0);
    let h = this.phases.get(name);
    if (!h) this.phases.set(name, (h = new LatencyHistogram()));
    h.add(ms);
    if (t0 > this.disturbedUntil) this.lat.add(ms);
    if (ms > 50) {
      const s = Math.floor((performance.timeOrigin + t0) / 1000);
      this.slowBySecond.set(s, (this.slowBySecond.get(s) ?? 0) + 1);
    }
    if (this.trafficT0 > 0) {
      const w = Math.floor((t1 - this.trafficT0) / 10_000);
      this.perWindow[w] = (this.perWindow[w] ?? 0) + 1;
    }
  }

  /** Check-ins per second of the whole 10 s windows of the traffic phase the restart did not touch, sorted. */
  windowRates(now: number): number[] {
    const full = Math.floor((now - this.trafficT0) / 10_000);
    const rates: number[] = [];
    for (let w = 0; w < full; w++) {
      const a = this.trafficT0 + w * 10_000;
      if (a + 10_000 > this.disturbedFrom && a < this.disturbedUntil) continue;
      rates.push((this.perWindow[w] ?? 0) / 10);
    }
    return rates.sort((x, y) => x - y);
  }
}

export interface SimulateResult {
  devices: number;
  durationSeconds: number;
  checkins: number;
  events: number;
  checkinsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** p99 including check-ins begun during the restart and the 5 s after it. */
  p99MsAll: number;
  /** Check-ins per second in 10 s windows of the traffic phase, outside the restart: the slowest, the median and the busiest window. */
  windows: { minPerSec: number; medianPerSec: number; maxPerSec: number; count: number };
  /** Latency from due time per phase of the release day, in the order the phases came (restart window included in its own phase). */
  phases: Array<{ phase: string; checkins: number; p50Ms: number; p99Ms: number; maxMs: number }>;
  /** How late the simulator's own timers fired (p99, ms): the part of the latency that is the client's. */
  clientLagP99Ms: number;
  /** How late the server's event loop ran (the worse of its two lives around the restart): stalls there delay every request. */
  serverLag: { p99Ms: number; maxMs: number };
  rolloutCompleted: boolean;
  /** State and reason of the first rollout at the end (diagnostics when it did not complete). */
  rollout1: { state: string; wave: number; reason: string | null };
  rolloutPausedCorrectly: boolean;
  pauseReason: string | null;
  lostUpdates: number;
  serverRestarted: boolean;
  retries: number;
  injected: { failed: number; rolledBack: number; silent: number; badRolledBack: number };
  finalVersions: Array<{ version: string; devices: number }>;
  cpu: { serverSeconds: number; clientSeconds: number; wallSeconds: number };
  realServer: boolean;
  config: {
    replicas: number;
    checkinIntervalSeconds: number;
    activeCheckinIntervalSeconds: number;
    rate: number;
    concurrency: number;
    maxConcurrentReboots: number;
    /** How fast the good rollout's waves open (devices per second; 0 = at once). */
    rampDevicesPerSecond: number;
    /** Set when the replicas ran as a cluster (SimulateOptions.cluster). */
    cluster?: { builders: number; balancer: boolean; store: string | null };
  };
}

/** The result's timing part, from the measurements at the end of the traffic phase. */
export function timings(m: Measurements, trafficSeconds: number, trafficCheckins: number, rates: number[]) {
  return {
    durationSeconds: Math.round(trafficSeconds * 10) / 10,
    checkinsPerSec: Math.round(trafficCheckins / trafficSeconds),
    p50Ms: m.lat.quantile(0.5),
    p99Ms: m.lat.quantile(0.99),
    maxMs: Math.round(m.lat.max * 10) / 10,
    p99MsAll: m.latAll.quantile(0.99),
    phases: [...m.phases].map(([phase, h]) => ({
      phase,
      checkins: h.count,
      p50Ms: h.quantile(0.5),
      p99Ms: h.quantile(0.99),
      maxMs: Math.round(h.max * 10) / 10,
    })),
    windows: { minPerSec: rates[0] ?? 0, medianPerSec: rates[Math.floor(rates.length / 2)] ?? 0, maxPerSec: rates[rates.length - 1] ?? 0, count: rates.length },
  };
}
