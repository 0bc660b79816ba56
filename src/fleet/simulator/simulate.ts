import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { IbuError } from '../../errors.js';
import type { CheckinRequest, CheckinResponse, DeviceEvent, DeviceState } from '../protocol.js';
import type { RolloutRecord } from '../types.js';

/**
 * `ibu fleet simulate`: N simulated devices against a real server (a child process running the
 * `ibu serve` application on loopback, own temp data dir) through a staged rollout with injected
 * failures, a server restart midway, and a second rollout of a bad release that must pause itself.
 *
 * Time is compressed: the server is configured (PUT /v1/admin/fleet/settings) with an idle
 * check-in interval of devices / rate seconds instead of an hour, and "preparing" (a download) or
 * "rebooting" take seconds. Devices speak the real protocol over HTTP (undici, pooled Agent) and
 * retry on errors like an agent would.
 *
 * The load is open-loop: every device keeps its own schedule (the nextCheckinSeconds the server
 * gave it, or how long its download or reboot takes) whatever the other devices wait for, so
 * the offered rate is the fleet's, not a function of how fast the server answers. Latency is
 * measured from the time a request was due, not from when it left: a request delayed by a
 * slow server, a full connection pool or a late client timer counts its whole delay (no
 * coordinated omission).
 */
export interface SimulateOptions {
  devices: number;
  /** Target idle check-ins per second (the interval becomes devices / rate). Default 1000. */
  rate?: number;
  /** HTTP connections to the server (requests beyond them wait in the client, and that wait counts in the latency). Default 128. */
  concurrency?: number;
  databaseUrl?: string;
  /** Injected failure shares among devices upgrading to the good release. */
  failRatio?: number;
  rollbackRatio?: number;
  silentRatio?: number;
  /** Rollback share on the bad release (must exceed the pause threshold). Default 0.3. */
  badRollbackRatio?: number;
  /** Share of the fleet that may hold a reboot lease at once (group `default`). Default 0.1. */
  rebootRatio?: number;
  /** Give up waiting for the first rollout after this many seconds. Default 25 intervals, at least 300 s. */
  timeoutSeconds?: number;
  restart?: boolean;
  keep?: boolean;
  log?: (msg: string) => void;
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
  config: { checkinIntervalSeconds: number; activeCheckinIntervalSeconds: number; rate: number; concurrency: number; maxConcurrentReboots: number };
}

type Mode = 'ok' | 'fail' | 'rollback' | 'silent';

interface SimDevice {
  id: string;
  token: string;
  version: string;
  committed: string;
  state: DeviceState;
  trial: boolean;
  prepared: string | null;
  lastError: { code: string; message: string } | null;
  /** What the server acknowledged last, and how many check-ins it acknowledged. */
  acked: { version: string; state: DeviceState; trial: boolean } | null;
  ackCount: number;
  dead: boolean;
  busy: boolean;
  attempts: Map<string, number>;
}

const GOOD = '2.0.0';
const BAD = '2.1.0';
const BASE = '1.0.0';

/** Latencies in 0.1 ms buckets up to 10 s, then 10 ms buckets up to 10 minutes: exact enough for p50/p99 at any count. */
class LatencyHistogram {
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

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** A sleep that does not keep the process alive (for races against a deadline). */
const unrefSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

export async function simulate(o: SimulateOptions): Promise<SimulateResult> {
  const log = o.log ?? (() => {});
  const n = o.devices;
  if (!Number.isInteger(n) || n < 10) throw new IbuError('USAGE', 'The simulation needs at least 10 devices (--devices N).');
  const rate = o.rate ?? 1000;
  const concurrency = o.concurrency ?? 128;
  const interval = Math.max(1, n / rate);
  const active = Math.max(0.5, Math.min(5, interval / 10));
  const failRatio = o.failRatio ?? 0.005;
  const rollbackRatio = o.rollbackRatio ?? 0.005;
  const silentRatio = o.silentRatio ?? 0.003;
  const badRollbackRatio = o.badRollbackRatio ?? 0.3;
  // A reboot takes ~1-2 active intervals here; silence is declared after two idle intervals (at
  // least 30 s) so a server restart or a loaded machine is not mistaken for dead devices.
  const silentAfter = Math.max(30, interval * 2);
  const maxReboots = Math.max(5, Math.round(n * (o.rebootRatio ?? 0.1)));
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-sim-'));
  const adminToken = randomBytes(16).toString('hex');
  const agent = new Agent({ connections: Math.max(8, Math.min(1024, concurrency)), pipelining: 1, keepAliveTimeout: 30_000 });
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const lat = new LatencyHistogram();
  // Check-ins that began while the server restarts (and 5 s after) measure the restart, not
  // steady service: they are kept apart and reported as p99MsAll.
  const latAll = new LatencyHistogram();
  let disturbedUntil = 0;
  let disturbedFrom = Number.POSITIVE_INFINITY;
  // Check-ins acknowledged per 10 s window of the traffic phase.
  const perWindow: number[] = [];
  let trafficT0 = 0;
  let checkins = 0;
  let events = 0;
  let retries = 0;
  let stopping = false;
  let serverCpu = 0;
  const serverLag = { p99Ms: 0, maxMs: 0 };
  // Sleeps that end at once when the simulation stops, so draining does not wait out intervals.
  const naps = new Set<() => void>();
  const nap = (ms: number) => new Promise<void>((resolve) => {
    if (stopping) return resolve();
    const done = () => {
      clearTimeout(t);
      naps.delete(done);
      resolve();
    };
    const t = setTimeout(done, ms);
    naps.add(done);
  });
  /** Sleeps ms and returns when the device meant to wake (the due time of its next request). */
  const napUntil = async (ms: number): Promise<number> => {
    const due = performance.now() + ms;
    await nap(ms);
    return due;
  };
  const stopAll = () => {
    stopping = true;
    for (const wake of [...naps]) wake();
  };
  const cpu0 = process.cpuUsage();
  const wall0 = Date.now();

  // --- the server as a child process -------------------------------------------------------
  const here = path.dirname(fileURLToPath(import.meta.url));
  // The server entry lives with the server (src/fleet never imports it): spawned by path, not imported.
  const entry = path.join(here, '..', '..', 'server', 'fleet', `sim-server${path.extname(fileURLToPath(import.meta.url))}`);
  let child: ChildProcess | null = null;
  let port = 0;
  let realServer = false;
  const startServer = async (): Promise<void> => {
    const args = [...process.execArgv.filter((a) => !a.startsWith('--test')), entry, '--data', dataDir, '--port', String(port), '--admin-token', adminToken];
    if (o.databaseUrl) args.push('--database-url', o.databaseUrl);
    const c = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    child = c;
    const lines = createInterface({ input: c.stdout! });
    const ready = new Promise<void>((resolve, reject) => {
      c.once('exit', (code) => reject(new IbuError('INTERNAL', `The simulated server exited with status ${code} before listening.`)));
      lines.on('line', (line) => {
        try {
          const msg = JSON.parse(line) as { port?: number; realServer?: boolean; cpu?: { user: number; system: number }; lag?: { p99Ms: number; maxMs: number } };
          if (msg.port) {
            port = msg.port;
            realServer = Boolean(msg.realServer);
            resolve();
          }
          if (msg.cpu) serverCpu += (msg.cpu.user + msg.cpu.system) / 1e6;
          if (msg.lag) {
            serverLag.p99Ms = Math.max(serverLag.p99Ms, msg.lag.p99Ms);
            serverLag.maxMs = Math.max(serverLag.maxMs, msg.lag.maxMs);
          }
        } catch {
          // not ours
        }
      });
    });
    await ready;
  };
  const stopServer = async (): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    await Promise.race([exited, unrefSleep(30_000).then(() => c.kill('SIGKILL'))]);
    await exited;
    child = null;
  };

  const origin = () => `http://127.0.0.1:${port}`;
  const http = async <T>(method: 'GET' | 'POST' | 'PUT', p: string, body: unknown, token: string | null): Promise<{ status: number; json: T }> => {
    const res = await request(origin() + p, {
      method,
      dispatcher: agent,
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.body.text();
    return { status: res.statusCode, json: (text ? JSON.parse(text) : null) as T };
  };
  const admin = async <T>(method: 'GET' | 'POST' | 'PUT', p: string, body?: unknown): Promise<T> => {
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await http<T>(method, p, body, adminToken);
        if (r.status >= 200 && r.status < 300) return r.json;
        if (r.status < 500 || attempt > 50) throw new IbuError('HTTP_ERROR', `${method} ${p} answered ${r.status}: ${JSON.stringify(r.json)}`);
      } catch (err) {
        if (err instanceof IbuError || attempt > 50) throw err;
      }
      await sleep(200);
    }
  };

  /**
   * One device request with retries (connection refused during the restart, 503 while closing).
   * `due`: when the device meant to send it (performance.now() time); the latency runs from
   * there, so a late timer, a wait for a connection and the retries all count.
   */
  const deviceCall = async <T>(p: string, body: unknown, token: string, isCheckin: boolean, due = performance.now()): Promise<T | null> => {
    const t0 = Math.min(due, performance.now());
    for (let attempt = 0; ; attempt++) {
      if (stopping && attempt > 0) return null;
      let status = 0;
      let json: T | null = null;
      try {
        const r = await http<T>('POST', p, body, token);
        status = r.status;
        json = r.json;
      } catch {
        status = 0;
      }
      if (status === 200) {
        if (isCheckin) {
          const t1 = performance.now();
          const ms = t1 - t0;
          latAll.add(ms);
          if (t0 > disturbedUntil) lat.add(ms);
          if (trafficT0 > 0) {
            const w = Math.floor((t1 - trafficT0) / 10_000);
            perWindow[w] = (perWindow[w] ?? 0) + 1;
          }
        }
        return json;
      }
      if (status >= 400 && status < 500) throw new IbuError('HTTP_ERROR', `${p} answered ${status}: ${JSON.stringify(json)}`);
      retries++;
      await nap(Math.min(2000, 100 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random()));
    }
  };

  try {
    await startServer();
    log(`server on ${origin()} (data ${dataDir}); ${n} devices, idle interval ${interval.toFixed(1)} s, active ${active.toFixed(1)} s`);
    await admin('PUT', '/v1/admin/fleet/settings', {
      checkinIntervalSeconds: interval, activeCheckinIntervalSeconds: active, jitter: 0.2, enrollmentSecret: 'simulated-fleet',
      evaluateEveryMs: 1000, defaultLeaseTtlSeconds: Math.max(60, interval),
    });
    // Releases come from the data dir like `ibu release publish` leaves them (channels/stable.json);
    // the stepping stone is marked mandatory through the admin API.
    await fsp.mkdir(path.join(dataDir, 'channels'), { recursive: true });
    await fsp.writeFile(path.join(dataDir, 'channels', 'stable.json'), JSON.stringify({ channel: 'stable', versions: [BASE, GOOD] }));
    await admin('POST', '/v1/admin/fleet/releases', { channel: 'stable', version: BASE });
    await admin('POST', '/v1/admin/fleet/releases', { channel: 'stable', version: GOOD });
    await admin('PUT', '/v1/admin/fleet/groups/canary', { maxConcurrentReboots: 0 });
    // Reboot leases pace the release day as they would in a real fleet: at most 10 % of the
    // fleet reboots at once; a device refused a lease comes back after a regular interval.
    await admin('PUT', '/v1/admin/fleet/groups/default', { maxConcurrentReboots: maxReboots, leaseTtlSeconds: Math.max(60, interval) });

    // --- enrollment --------------------------------------------------------------------------
    const devices: SimDevice[] = [];
    const canaries = Math.max(3, Math.round(n * 0.002));
    let next = 0;
    await Promise.all(Array.from({ length: Math.min(concurrency, 64) }, async () => {
      while (next < n) {
        const i = next++;
        const id = `sim-${String(i).padStart(6, '0')}`;
        const r = await deviceCall<{ token: string }>('/v1/devices/enroll', { deviceId: id, enrollmentSecret: 'simulated-fleet', group: i < canaries ? 'canary' : 'default' }, '', false);
        devices[i] = {
          id, token: r!.token, version: BASE, committed: BASE, state: 'committed', trial: false, prepared: null, lastError: null,
          acked: null, ackCount: 0, dead: false, busy: false, attempts: new Map(),
        };
      }
    }));
    log(`enrolled ${n} devices`);

    const rollout1 = await admin<RolloutRecord>('POST', '/v1/admin/fleet/rollouts', {
      channel: 'stable', version: GOOD,
      // 1.3 % injected bad outcomes against a 5 % threshold: a sample of 100 keeps noise from pausing it.
      spec: { waves: [1, 10, 50, 100], canaryGroups: ['canary'], successRatio: 0.95, maxFailureRatio: 0.05, minSample: 100, silentAfterSeconds: silentAfter },
    });

    const injected = { failed: 0, rolledBack: 0, silent: 0, badRolledBack: 0 };
    const modeFor = (d: SimDevice, target: string): Mode => {
      const attempt = d.attempts.get(target) ?? 0;
      d.attempts.set(target, attempt + 1);
      if (attempt > 0) return 'ok'; // injected failures are one-shot: the retry works
      const r = Math.random();
      if (target === BAD) return r < badRollbackRatio ? 'rollback' : 'ok';
      if (r < failRatio) return 'fail';
      if (r < failRatio + rollbackRatio) return 'rollback';
      if (r < failRatio + rollbackRatio + silentRatio) return 'silent';
      return 'ok';
    };

    const report = (d: SimDevice, extra: Partial<CheckinRequest> = {}): CheckinRequest => ({
      version: d.version, state: d.state, trial: d.trial, committedVersion: d.committed, preparedVersion: d.prepared ?? undefined,
      freeBytes: 8 * 1024 ** 3, lastError: d.lastError, ...extra,
    });
    const checkin = async (d: SimDevice, extra: Partial<CheckinRequest> = {}, due?: number): Promise<CheckinResponse | null> => {
      const body = report(d, extra);
      const res = await deviceCall<CheckinResponse>(`/v1/devices/${d.id}/checkin`, body, d.token, true, due);
      if (res) {
        checkins++;
        d.acked = { version: body.version, state: body.state, trial: body.trial };
        d.ackCount++;
      }
      return res;
    };
    const event = async (d: SimDevice, ev: DeviceEvent): Promise<void> => {
      if (await deviceCall(`/v1/devices/${d.id}/events`, ev, d.token, false)) events++;
    };

    /** An upgrade as an agent does it: prepare, ask for a lease, apply, reboot, confirm. */
    const upgrade = async (d: SimDevice, target: string): Promise<number> => {
      const mode = modeFor(d, target);
      d.state = 'preparing';
      // The download: 5-30 % of an idle interval (minutes against an hour in a real fleet).
      const downloaded = await napUntil(interval * 1000 * (0.05 + 0.25 * Math.random()));
      if (stopping) return interval;
      if (mode === 'fail') {
        injected.failed++;
        d.state = 'failed';
        d.lastError = { code: 'IMAGE_HASH_MISMATCH', message: `simulated: ${target} failed verification` };
        await event(d, { type: 'prepare-failed', fromVersion: d.version, toVersion: target, error: d.lastError });
        return interval; // try again at the next regular check-in
      }
      d.state = 'prepared';
      d.prepared = target;
      let res = await checkin(d, { wantRebootLease: true }, downloaded);
      while (res && !res.rebootLease.granted && !stopping) {
        const due = await napUntil(res.nextCheckinSeconds * 1000);
        if (stopping) return interval;
        res = await checkin(d, { wantRebootLease: true }, due);
      }
      if (!res || stopping) return interval;
      if (res.target?.version !== target) {
        d.state = 'idle'; // the rollout paused meanwhile: do not apply
        d.prepared = null;
        return res.nextCheckinSeconds;
      }
      await event(d, { type: 'apply-started', fromVersion: d.version, toVersion: target });
      d.state = 'applying';
      if (mode === 'silent') {
        injected.silent++;
        d.dead = true; // rebooted and never came back
        return 0;
      }
      const rebooted = await napUntil(1000 * (0.5 + Math.random()) * active); // the reboot
      const from = d.version;
      if (mode === 'rollback') {
        if (target === BAD) injected.badRolledBack++;
        else injected.rolledBack++;
        d.state = 'rolled-back';
        d.prepared = null;
        d.lastError = { code: 'HEALTH_CHECK_FAILED', message: `simulated: health check failed on ${target}` };
        await event(d, { type: 'rolled-back', fromVersion: from, toVersion: target, error: d.lastError });
        const r = await checkin(d, {}, rebooted);
        return r ? r.nextCheckinSeconds : interval;
      }
      d.version = target;
      d.trial = true;
      d.state = 'trial';
      d.prepared = null;
      await checkin(d, {}, rebooted);
      await event(d, { type: 'upgrade-succeeded', fromVersion: from, toVersion: target });
      d.trial = false;
      d.committed = target;
      d.state = 'committed';
      d.lastError = null;
      const r = await checkin(d);
      return r ? r.nextCheckinSeconds : interval;
    };

    const loops: Array<Promise<void>> = [];
    const trafficStart = Date.now();
    trafficT0 = performance.now();
    // Event-loop delay of both processes counts from here: enrollment is a flood on purpose.
    lag.reset();
    (child as ChildProcess | null)?.kill('SIGUSR2');
    const checkins0 = checkins;
    for (const d of devices) {
      loops.push((async () => {
        let due = await napUntil(Math.random() * interval * 1000);
        while (!stopping && !d.dead) {
          const res = await checkin(d, {}, due);
          if (!res) break;
          let wait = res.nextCheckinSeconds;
          if (res.target && d.state !== 'preparing') wait = await upgrade(d, res.target.version);
          else if (d.state === 'rolled-back' || d.state === 'failed') d.state = 'idle';
          if (d.dead) break;
          due = await napUntil(wait * 1000);
        }
      })().catch((err) => log(`device ${d.id} stopped: ${(err as Error).message}`)));
    }

    // --- the operator: restart midway, then a bad release -----------------------------------
    const timeoutMs = (o.timeoutSeconds ?? Math.max(300, interval * 25)) * 1000;
    let serverRestarted = false;
    let r1: RolloutRecord = rollout1;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(1000);
      r1 = await admin<RolloutRecord>('GET', `/v1/admin/fleet/rollouts/${rollout1.id}?brief=1`);
      if (!serverRestarted && (o.restart ?? true) && r1.wave >= 3) {
        log(`rollout ${r1.id} at wave ${r1.wave}: restarting the server`);
        disturbedUntil = Number.POSITIVE_INFINITY;
        disturbedFrom = performance.now();
        await stopServer();
        await startServer();
        disturbedUntil = performance.now() + 5000;
        serverRestarted = true;
        log('server back');
      }
      if (r1.state !== 'running') break;
    }
    const rolloutCompleted = r1.state === 'completed';
    log(`rollout ${r1.id}: ${r1.state}${r1.reason ? ` (${r1.reason})` : ''}`);

    let rolloutPausedCorrectly = false;
    let pauseReason: string | null = null;
    if (rolloutCompleted) {
      await fsp.writeFile(path.join(dataDir, 'channels', 'stable.json'), JSON.stringify({ channel: 'stable', versions: [BASE, GOOD, BAD] }));
      await admin('POST', '/v1/admin/fleet/releases', { channel: 'stable', version: BAD });
      const rollout2 = await admin<RolloutRecord>('POST', '/v1/admin/fleet/rollouts', {
        channel: 'stable', version: BAD,
        spec: { waves: [5, 50, 100], canaryGroups: [], successRatio: 0.95, maxFailureRatio: 0.1, minSample: 20, silentAfterSeconds: silentAfter },
      });
      const deadline2 = Date.now() + Math.max(300, interval * 20) * 1000;
      let r2 = rollout2;
      while (Date.now() < deadline2) {
        await sleep(1000);
        r2 = await admin<RolloutRecord>('GET', `/v1/admin/fleet/rollouts/${rollout2.id}?brief=1`);
        if (r2.state !== 'running') break;
      }
      pauseReason = r2.reason;
      // Correct: it paused by itself, inside its first wave, and not before devices went bad.
      rolloutPausedCorrectly = r2.state === 'paused' && r2.wave === 0 && injected.badRolledBack > 0;
      log(`rollout ${r2.id}: ${r2.state}${r2.reason ? ` (${r2.reason})` : ''}`);
    }

    // --- stop, drain, compare what devices were told with what the server has ----------------
    const trafficSeconds = (Date.now() - trafficStart) / 1000;
    const trafficCheckins = checkins - checkins0;
    // Whole 10 s windows of the traffic phase, leaving out those the restart touched.
    const full = Math.floor((performance.now() - trafficT0) / 10_000);
    const rates: number[] = [];
    for (let w = 0; w < full; w++) {
      const a = trafficT0 + w * 10_000;
      if (a + 10_000 > disturbedFrom && a < disturbedUntil) continue;
      rates.push((perWindow[w] ?? 0) / 10);
    }
    rates.sort((x, y) => x - y);
    const clientLagP99Ms = Math.round(lag.percentile(99) / 1e4) / 100;
    stopAll();
    await Promise.race([Promise.all(loops), unrefSleep(60_000)]);
    let lostUpdates = 0;
    const byId = new Map(devices.map((d) => [d.id, d]));
    let after = '';
    let seen = 0;
    for (;;) {
      const page = await admin<{ devices: Array<{ id: string; version: string | null; state: string | null; trial: boolean; checkins: number }>; next: string | null }>(
        'GET', `/v1/admin/fleet/devices?after=${encodeURIComponent(after)}&limit=10000`);
      for (const s of page.devices) {
        const d = byId.get(s.id);
        if (!d) continue;
        seen++;
        const a = d.acked;
        if (s.checkins < d.ackCount || (a && (s.version !== a.version || s.state !== a.state || s.trial !== a.trial))) lostUpdates++;
      }
      if (!page.next || page.devices.length === 0) break;
      after = page.next;
    }
    lostUpdates += n - seen; // an enrolled device the server does not know at all
    const finalVersions = await admin<Array<{ version: string; devices: number }>>('GET', '/v1/admin/fleet/versions');
    await stopServer();
    const cpu = process.cpuUsage(cpu0);
    return {
      devices: n,
      durationSeconds: Math.round(trafficSeconds * 10) / 10,
      checkins,
      events,
      checkinsPerSec: Math.round(trafficCheckins / trafficSeconds),
      p50Ms: lat.quantile(0.5),
      p99Ms: lat.quantile(0.99),
      maxMs: Math.round(lat.max * 10) / 10,
      p99MsAll: latAll.quantile(0.99),
      windows: { minPerSec: rates[0] ?? 0, medianPerSec: rates[Math.floor(rates.length / 2)] ?? 0, maxPerSec: rates[rates.length - 1] ?? 0, count: rates.length },
      clientLagP99Ms,
      serverLag,
      rolloutCompleted,
      rollout1: { state: r1.state, wave: r1.wave, reason: r1.reason },
      rolloutPausedCorrectly,
      pauseReason,
      lostUpdates,
      serverRestarted,
      retries,
      injected,
      finalVersions,
      cpu: { serverSeconds: Math.round(serverCpu * 10) / 10, clientSeconds: Math.round(((cpu.user + cpu.system) / 1e6) * 10) / 10, wallSeconds: Math.round((Date.now() - wall0) / 100) / 10 },
      realServer,
      config: { checkinIntervalSeconds: interval, activeCheckinIntervalSeconds: active, rate, concurrency, maxConcurrentReboots: maxReboots },
    };
  } finally {
    stopping = true;
    lag.disable();
    await stopServer().catch(() => {});
    await agent.close().catch(() => {});
    if (!o.keep) rmSync(dataDir, { recursive: true, force: true });
  }
}
