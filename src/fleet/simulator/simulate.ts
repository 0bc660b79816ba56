import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { IbuError } from '../../errors.js';
import { SimClient } from './client.js';
import { DeviceModel, type SimDevice } from './device-model.js';
import { Naps, unrefSleep } from './naps.js';
import { Measurements, timings, type SimulateResult } from './report.js';
import { countLostUpdates, rollOutBadRelease, setUpFleet, startGoodRollout, watchRollout, type ScenarioContext } from './scenario.js';
import { ServerProcess } from './server-process.js';
import { traceStalls } from './stall-trace.js';

export type { SimulateResult } from './report.js';

/**
 * `ibu fleet simulate`: N simulated devices against a real server (a child process running the
 * `ibu serve` application on loopback, own temp data dir) through a staged rollout with injected
 * failures, a server restart midway, and a second rollout of a bad release that must pause itself.
 * The parts: the server process (server-process.ts), the HTTP client (client.ts), the devices
 * (device-model.ts), the operator's steps (scenario.ts) and what is measured (report.ts).
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
  /**
   * Server processes on the one database (PostgreSQL only): each device request goes to the next
   * in turn, as a balancer would send it, and the restart midway becomes one replica killed
   * (SIGKILL) and started again while the others serve. Default 1.
   */
  replicas?: number;
  /**
   * The replicas as a scaled deployment (docs/deployment.md): they run `--role api` on a shared
   * release store and delta directory, `builders` more run `--role builder`, and `balancer`
   * (nginx, say) is started in front of the api replicas; devices and the operator then speak to
   * it only, and the replica killed midway is one of its upstreams.
   */
  cluster?: ClusterOptions;
  /** Injected failure shares among devices upgrading to the good release. */
  failRatio?: number;
  rollbackRatio?: number;
  silentRatio?: number;
  /** Rollback share on the bad release (must exceed the pause threshold). Default 0.3. */
  badRollbackRatio?: number;
  /**
   * The good rollout opens each wave at this many devices per second (its `rampPercentPerMinute`),
   * so a wave's upgrades (download, lease, apply, trial, commit: five requests a device) come on
   * top of the idle check-ins at a bounded rate: rate / 5 adds about the idle rate at most.
   * Default rate / 5 (200 at the default rate): opened at once, the 100 % wave's burst alone made
   * the tail of seconds on 2 cores (docs/benchmarks.md: "Fleet"). 0: every wave at once.
   */
  rampDevicesPerSecond?: number;
  /** Share of the fleet that may hold a reboot lease at once (group `default`). Default 0.1. */
  rebootRatio?: number;
  /** Give up waiting for the first rollout after this many seconds. Default 25 intervals, at least 300 s. */
  timeoutSeconds?: number;
  restart?: boolean;
  keep?: boolean;
  log?: (msg: string) => void;
}

export interface ClusterOptions {
  /** `s3://bucket/prefix`; S3 settings and credentials in `env` (the AWS variables). */
  store?: string;
  env?: Record<string, string>;
  /** Shared by every replica (`--delta-dir`). Default: a temp dir made here. */
  deltaDir?: string;
  builders?: number;
  balancer?: (origins: string[]) => Promise<{ origin: string; stop(): Promise<void> }>;
}

export async function simulate(o: SimulateOptions): Promise<SimulateResult> {
  const log = o.log ?? (() => {});
  const n = o.devices;
  if (!Number.isInteger(n) || n < 10) throw new IbuError('USAGE', 'The simulation needs at least 10 devices (--devices N).');
  const rate = o.rate ?? 1000;
  const replicas = o.replicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 1) throw new IbuError('USAGE', '--replicas needs a whole number of server processes, 1 or more.');
  if (replicas > 1 && !o.databaseUrl)
    throw new IbuError('USAGE', 'Replicas share one fleet through PostgreSQL: give --database-url postgres://... with --replicas.');
  const concurrency = o.concurrency ?? 128;
  const interval = Math.max(1, n / rate);
  const active = Math.max(0.5, Math.min(5, interval / 10));
  // A reboot takes ~1-2 active intervals here; silence is declared after two idle intervals (at
  // least 30 s) so a server restart or a loaded machine is not mistaken for dead devices.
  const silentAfter = Math.max(30, interval * 2);
  const maxReboots = Math.max(5, Math.round(n * (o.rebootRatio ?? 0.1)));
  const rampDevicesPerSecond = o.rampDevicesPerSecond ?? rate / 5;
  if (!(rampDevicesPerSecond >= 0)) throw new IbuError('USAGE', '--ramp needs a number of devices per second >= 0 (0 = every wave at once).');
  const rampPercentPerMinute = ((rampDevicesPerSecond * 60) / n) * 100;
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-sim-'));
  const adminToken = randomBytes(16).toString('hex');
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const trace = process.env.IBU_SIM_TRACE;
  const untrace = traceStalls(trace, 'simulator');
  const m = new Measurements();
  const naps = new Naps();
  // Replica i > 0 gets its own data dir (one server per directory); the releases reach it through the database.
  const cl = o.cluster;
  if (cl && !o.databaseUrl) throw new IbuError('USAGE', 'A cluster shares one fleet and one delta queue through PostgreSQL: give --database-url.');
  const deltaDir = cl ? (cl.deltaDir ?? mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-sim-deltas-'))) : undefined;
  const replica = (i: number, role?: 'api' | 'builder') =>
    new ServerProcess({
      dataDir: i === 0 ? dataDir : mkdtempSync(path.join(os.tmpdir(), `ibu-fleet-sim-r${i}-`)),
      adminToken,
      databaseUrl: o.databaseUrl,
      ...(cl ? { role, store: cl.store, deltaDir, env: cl.env } : {}),
    });
  const servers = Array.from({ length: replicas }, (_, i) => replica(i, 'api'));
  const builders = Array.from({ length: cl?.builders ?? 0 }, (_, i) => replica(replicas + i, 'builder'));
  const everyProcess = [...servers, ...builders];
  const server = servers[0]!;
  let turn = 0;
  let front: { origin: string; stop(): Promise<void> } | null = null;
  const client = new SimClient(() => front?.origin ?? servers[turn++ % servers.length]!.origin, adminToken, concurrency, naps, m);
  const model = new DeviceModel(client, naps, m, {
    interval,
    active,
    failRatio: o.failRatio ?? 0.005,
    rollbackRatio: o.rollbackRatio ?? 0.005,
    silentRatio: o.silentRatio ?? 0.003,
    badRollbackRatio: o.badRollbackRatio ?? 0.3,
  });
  const ctx: ScenarioContext = { client, dataDir, log };
  const cpu0 = process.cpuUsage();
  const wall0 = Date.now();

  try {
    await Promise.all(everyProcess.map((s) => s.start()));
    if (cl?.balancer) front = await cl.balancer(servers.map((s) => s.origin));
    const where =
      `${replicas > 1 ? `${replicas} replicas${builders.length ? ` + ${builders.length} builder(s)` : ''}, first ` : ''}server on ${server.origin}` +
      `${front ? ` behind ${front.origin}` : ''} (data ${dataDir})`;
    log(`${where}; ${n} devices, idle interval ${interval.toFixed(1)} s, active ${active.toFixed(1)} s`);
    await setUpFleet(ctx, { interval, active, maxReboots });
    // Every replica must have heard the set-up (its last write is the default group) before devices enroll anywhere.
    for (const s of servers.slice(1)) {
      while (!(await client.adminOn<{ groups: Array<{ name: string }> }>(s.origin, '/v1/admin/fleet/summary')).groups.some((g) => g.name === 'default'))
        await unrefSleep(5);
    }

    // --- enrollment --------------------------------------------------------------------------
    const devices: SimDevice[] = [];
    const canaries = Math.max(3, Math.round(n * 0.002));
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(concurrency, 64) }, async () => {
        while (next < n) {
          const i = next++;
          devices[i] = await model.enroll(`sim-${String(i).padStart(6, '0')}`, i < canaries ? 'canary' : 'default');
        }
      }),
    );
    log(`enrolled ${n} devices`);
    const rollout1 = await startGoodRollout(ctx, silentAfter, rampPercentPerMinute);

    // --- traffic: every device on its own schedule ----------------------------------------
    const trafficStart = Date.now();
    m.trafficT0 = performance.now();
    // Event-loop delay of both processes counts from here: enrollment is a flood on purpose.
    lag.reset();
    for (const s of servers) s.markTrafficStart();
    const checkins0 = m.checkins;
    const loops = devices.map((d) => model.run(d).catch((err) => log(`device ${d.id} stopped: ${(err as Error).message}`)));

    // --- the operator: restart midway, then a bad release -----------------------------------
    let serverRestarted = false;
    m.setPhase('rollout 1, wave 0');
    const r1 = await watchRollout(ctx, rollout1, Date.now() + (o.timeoutSeconds ?? Math.max(300, interval * 25)) * 1000, async (r) => {
      if (!(m.disturbedUntil > performance.now())) m.setPhase(r.state === 'running' ? `rollout 1, wave ${r.wave}` : 'after rollout 1');
      if (serverRestarted || !(o.restart ?? true) || r.wave < 3) return;
      log(`rollout ${r.id} at wave ${r.wave}: ${replicas > 1 ? 'killing one replica and starting it again' : 'restarting the server'}`);
      m.disturbedUntil = Number.POSITIVE_INFINITY;
      m.disturbedFrom = performance.now();
      m.setPhase('restart (+5 s)');
      if (replicas > 1) await server.kill();
      else await server.stop();
      await server.start();
      m.disturbedUntil = performance.now() + 5000;
      serverRestarted = true;
      log('server back');
    });
    const rolloutCompleted = r1.state === 'completed';
    log(`rollout ${r1.id}: ${r1.state}${r1.reason ? ` (${r1.reason})` : ''}`);

    let rolloutPausedCorrectly = false;
    let pauseReason: string | null = null;
    if (rolloutCompleted) {
      m.setPhase('rollout 2 (bad release)');
      const r2 = await rollOutBadRelease(ctx, silentAfter, Date.now() + Math.max(300, interval * 20) * 1000);
      pauseReason = r2.reason;
      // Correct: it paused by itself, inside its first wave, and not before devices went bad.
      rolloutPausedCorrectly = r2.state === 'paused' && r2.wave === 0 && model.injected.badRolledBack > 0;
    }

    // --- stop, drain, compare what devices were told with what the server has ----------------
    const trafficSeconds = (Date.now() - trafficStart) / 1000;
    const trafficCheckins = m.checkins - checkins0;
    const rates = m.windowRates(performance.now());
    const clientLagP99Ms = Math.round(lag.percentile(99) / 1e4) / 100;
    if (trace) for (const [s, slow] of m.slowBySecond) appendFileSync(trace, JSON.stringify({ who: 'latency', at: s * 1000, slowOver50ms: slow }) + '\n');
    if (trace)
      for (const p of m.phaseAt) appendFileSync(trace, JSON.stringify({ who: 'phase', at: Math.round(performance.timeOrigin + p.at), phase: p.name }) + '\n');
    naps.stopAll();
    await Promise.race([Promise.all(loops), unrefSleep(60_000)]);
    const lostUpdates = await countLostUpdates(ctx, devices);
    const finalVersions = await client.admin<Array<{ version: string; devices: number }>>('GET', '/v1/admin/fleet/versions');
    await Promise.all(everyProcess.map((s) => s.stop()));
    const cpu = process.cpuUsage(cpu0);
    return {
      devices: n,
      checkins: m.checkins,
      events: m.events,
      ...timings(m, trafficSeconds, trafficCheckins, rates),
      clientLagP99Ms,
      serverLag: { p99Ms: Math.max(...servers.map((s) => s.lag.p99Ms)), maxMs: Math.max(...servers.map((s) => s.lag.maxMs)) },
      rolloutCompleted,
      rollout1: { state: r1.state, wave: r1.wave, reason: r1.reason },
      rolloutPausedCorrectly,
      pauseReason,
      lostUpdates,
      serverRestarted,
      retries: m.retries,
      injected: model.injected,
      finalVersions,
      cpu: {
        serverSeconds: Math.round(everyProcess.reduce((n, s) => n + s.cpuSeconds, 0) * 10) / 10,
        clientSeconds: Math.round(((cpu.user + cpu.system) / 1e6) * 10) / 10,
        wallSeconds: Math.round((Date.now() - wall0) / 100) / 10,
      },
      realServer: server.realServer,
      config: {
        replicas,
        checkinIntervalSeconds: interval,
        activeCheckinIntervalSeconds: active,
        rate,
        concurrency,
        maxConcurrentReboots: maxReboots,
        rampDevicesPerSecond,
        ...(cl ? { cluster: { builders: builders.length, balancer: front !== null, store: cl.store ?? null } } : {}),
      },
    };
  } finally {
    naps.stopping = true;
    lag.disable();
    untrace();
    await Promise.all(everyProcess.map((s) => s.stop().catch(() => {})));
    await front?.stop().catch(() => {});
    await client.close().catch(() => {});
    if (!o.keep) for (const s of everyProcess) rmSync(s.dataDir, { recursive: true, force: true });
    if (!o.keep && deltaDir && !cl?.deltaDir) rmSync(deltaDir, { recursive: true, force: true });
  }
}
