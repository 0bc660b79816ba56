/**
 * Fleet benchmark: the release day of a whole fleet on this machine.
 *   npm run bench:fleet                      (80,000 devices, 3 runs)
 *   FLEET_DEVICES=20000 FLEET_RUNS=1 npm run bench:fleet
 * Each run is `ibu fleet simulate` (src/fleet/simulator/): the real server in a child
 * process on SQLite, devices over loopback HTTP, open-loop (latency from the time a request was
 * due). The anchor, measured right after each run: a bare Fastify route in a child process that
 * answers a check-in-shaped object, hit by the same client open-loop at the rate the run
 * sustained, latency measured the same way: the HTTP floor at that rate and that moment's load.
 * At the end, saturation (closed-loop, as fast as the client can send) of the real check-in
 * route and of the bare route. The load average is printed before and after every run.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { Agent, request } from 'undici';
import pg from 'pg';
import { simulate, type ClusterOptions, type SimulateResult } from '../src/fleet/simulator/simulate.js';
import { isYoungGenerationFlag } from '../src/fleet/simulator/young-generation.js';
import { newDeviceKey, signEnrollment } from '../src/fleet/device-proof.js';
import { startCdn } from '../test/helpers/nginx-cdn.js';
import { newBucket, radosgw } from '../test/helpers/radosgw.js';

const devices = Number(process.env.FLEET_DEVICES ?? 80_000);
const runs = Number(process.env.FLEET_RUNS ?? 3); // 0: only the capacity and anchor measurements
const rate = Number(process.env.FLEET_RATE ?? 1000);
const concurrency = Number(process.env.FLEET_CONCURRENCY ?? 128);
// FLEET_DATABASE_URL=postgres://... runs the server on PostgreSQL: each run gets a fresh database made (and
// dropped) through that URL; FLEET_REPLICAS=2 with it spreads the devices over two server processes (the
// restart kills one of them).
const adminDatabaseUrl = process.env.FLEET_DATABASE_URL || undefined;
const replicas = Number(process.env.FLEET_REPLICAS ?? 1);
// FLEET_CLUSTER=1 (with FLEET_DATABASE_URL and FLEET_REPLICAS >= 2): the scaled deployment of issue #21 —
// the replicas run --role api on releases in a radosgw bucket, one more runs --role builder, and nginx
// (assets/nginx/ibu-cdn.conf) balances in front; devices speak to nginx only.
const cluster = process.env.FLEET_CLUSTER === '1';
// FLEET_RAMP=N: the rollout's waves open at N devices per second (default: the simulator's, rate / 5; 0: each wave at once).
const ramp = process.env.FLEET_RAMP === undefined || process.env.FLEET_RAMP === '' ? undefined : Number(process.env.FLEET_RAMP);

/** A new, empty database beside the one `url` names; returns its URL. */
async function freshDatabase(url: string, name: string): Promise<string> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const load = () => os.loadavg().map((l) => Math.round(l * 100) / 100);

async function bareServer(): Promise<{ port: number; stop: () => void }> {
  const code = `
    const Fastify = (await import('fastify')).default;
    const app = Fastify();
    app.post('/noop', async () => ({ target: null, deltaReady: false, window: null, rebootLease: { granted: false }, nextCheckinSeconds: 60 }));
    await app.listen({ host: '127.0.0.1', port: 0 });
    console.log(JSON.stringify({ port: app.server.address().port }));
    process.on('SIGTERM', () => app.close().then(() => process.exit(0)));`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'], cwd: process.cwd() });
  const port = await new Promise<number>((resolve) => createInterface({ input: child.stdout! }).once('line', (l) => resolve(JSON.parse(l).port)));
  return { port, stop: () => child.kill('SIGTERM') };
}

/**
 * The anchor at the run's rate: requests sent on a fixed schedule (Poisson arrivals at `perSec`)
 * whatever the answers do, each timed from when it was due, like the simulator's check-ins.
 */
async function openLoopFloor(perSec: number, seconds: number): Promise<{ perSec: number; p50Ms: number; p99Ms: number; requests: number }> {
  const { port, stop } = await bareServer();
  const agent = new Agent({ connections: concurrency, pipelining: 1 });
  const lat: number[] = [];
  const inflight: Array<Promise<void>> = [];
  const t0 = performance.now();
  let due = t0;
  const end = t0 + seconds * 1000;
  while (due < end) {
    due += -Math.log(1 - Math.random()) * (1000 / perSec);
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const at = due;
    inflight.push(
      request(`http://127.0.0.1:${port}/noop`, {
        method: 'POST',
        dispatcher: agent,
        headers: { 'content-type': 'application/json' },
        body: '{"version":"1.0.0","state":"idle","trial":false}',
      })
        .then((res) => res.body.text())
        .then(() => void lat.push(performance.now() - at)),
    );
  }
  await Promise.all(inflight);
  const secs = (performance.now() - t0) / 1000;
  stop();
  await agent.close();
  lat.sort((a, b) => a - b);
  return {
    perSec: Math.round(lat.length / secs),
    p50Ms: Math.round(lat[Math.floor(lat.length * 0.5)]! * 10) / 10,
    p99Ms: Math.round(lat[Math.floor(lat.length * 0.99)]! * 10) / 10,
    requests: lat.length,
  };
}

/** Saturation of a Fastify route that does nothing, in a child process, hit by the same client. */
async function httpFloor(requests: number): Promise<{ perSec: number; p50Ms: number; p99Ms: number }> {
  const { port, stop } = await bareServer();
  const agent = new Agent({ connections: concurrency, pipelining: 1 });
  const lat: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next++ < requests) {
        const s = performance.now();
        const res = await request(`http://127.0.0.1:${port}/noop`, {
          method: 'POST',
          dispatcher: agent,
          headers: { 'content-type': 'application/json' },
          body: '{"version":"1.0.0","state":"idle","trial":false}',
        });
        await res.body.text();
        lat.push(performance.now() - s);
      }
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  stop();
  await agent.close();
  lat.sort((a, b) => a - b);
  return {
    perSec: Math.round(lat.length / secs),
    p50Ms: Math.round(lat[Math.floor(lat.length * 0.5)]! * 10) / 10,
    p99Ms: Math.round(lat[Math.floor(lat.length * 0.99)]! * 10) / 10,
  };
}

/**
 * Check-in capacity: the real server (sim-server.ts: createServer + fleet plugin; SQLite, or
 * PostgreSQL with `databaseUrl`) with 5,000 enrolled devices, hammered by the same client loop as
 * the anchor: saturation throughput and latency of real check-ins (read device, decide,
 * group-commit, answer). `replicas` > 1 (PostgreSQL only): that many server processes on the one
 * database, the client's requests taking turns between them as a balancer's would (issue #21 item 7).
 */
async function checkinCapacity(
  requests: number,
  databaseUrl?: string,
  replicas = 1,
): Promise<{ replicas: number; perSec: number; p50Ms: number; p99Ms: number; serverCpuMsPerCheckin: number; postgresCpuMsPerCheckin?: number }> {
  if (replicas > 1 && !databaseUrl) throw new Error('replicas share a database: give a PostgreSQL URL');
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-bench-'));
  const entry = fileURLToPath(new URL('../src/server/fleet/sim-server.ts', import.meta.url));
  const db = databaseUrl ? ['--database-url', databaseUrl] : [];
  const cpu: number[] = [];
  const servers: Array<{ port: number; child: ReturnType<typeof spawn> }> = [];
  // one after the other: the first one makes the schema
  for (let r = 0; r < replicas; r++) {
    // The bench's own young-generation flag (the simulator's, SIMULATOR_SEMI_SPACE_MIB) is not the server's.
    const child = spawn(
      process.execPath,
      [
        ...process.execArgv.filter((a) => !isYoungGenerationFlag(a)),
        entry,
        '--data',
        path.join(dataDir, `r${r}`),
        '--port',
        '0',
        '--admin-token',
        'bench',
        ...db,
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const port = await new Promise<number>((resolve) =>
      createInterface({ input: child.stdout! }).on('line', (l) => {
        const m = JSON.parse(l);
        if (m.port) resolve(m.port);
        if (m.cpu) cpu[r] = (m.cpu.user + m.cpu.system) / 1000;
      }),
    );
    servers.push({ port, child });
  }
  const agent = new Agent({ connections: concurrency, pipelining: 1 });
  const call = async (method: 'POST' | 'PUT', p: string, body: unknown, token?: string, replica = 0) => {
    const res = await request(`http://127.0.0.1:${servers[replica]!.port}${p}`, {
      method,
      dispatcher: agent,
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body),
    });
    return res.body.json() as Promise<{ token?: string }>;
  };
  await call('PUT', '/v1/admin/fleet/settings', { enrollmentSecret: 'bench' }, 'bench');
  for (const v of ['1.0.0', '2.0.0']) await call('POST', '/v1/admin/fleet/releases', { version: v }, 'bench');
  await call('POST', '/v1/admin/fleet/rollouts', { version: '2.0.0', spec: { waves: [10, 100] } }, 'bench');
  const tokens: string[] = [];
  const key = newDeviceKey();
  for (let i = 0; i < 5000; i++)
    tokens.push((await call('POST', '/v1/devices/enroll', signEnrollment(key, { deviceId: `cap-${i}`, enrollmentSecret: 'bench' }))).token!);
  const lat: number[] = [];
  let next = 0;
  const pg0 = databaseUrl ? postgresCpuMs() : 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < requests) {
        const n = next++;
        const i = n % 5000;
        const s = performance.now();
        const body = { version: '1.0.0', state: 'idle', trial: false, freeBytes: 1e9, lastError: null };
        await call('POST', `/v1/devices/cap-${i}/checkin`, body, tokens[i], n % replicas);
        lat.push(performance.now() - s);
      }
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  const pgMs = databaseUrl ? postgresCpuMs() - pg0 : 0;
  await Promise.all(
    servers.map(({ child }) => {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      return exited;
    }),
  );
  await agent.close();
  rmSync(dataDir, { recursive: true, force: true });
  lat.sort((a, b) => a - b);
  const serverCpu = cpu.reduce((a, b) => a + (b ?? 0), 0);
  return {
    replicas,
    perSec: Math.round(lat.length / secs),
    p50Ms: Math.round(lat[Math.floor(lat.length * 0.5)]! * 10) / 10,
    p99Ms: Math.round(lat[Math.floor(lat.length * 0.99)]! * 10) / 10,
    // every replica's CPU, enrollment (5,000 requests) included, as before
    serverCpuMsPerCheckin: Math.round((serverCpu / (requests + 5000)) * 1000) / 1000,
    // PostgreSQL's own processes (the server's sessions): CPU the database spends per check-in, beside ibu's.
    ...(databaseUrl ? { postgresCpuMsPerCheckin: Math.round((pgMs / requests) * 1000) / 1000 } : {}),
  };
}

/** CPU milliseconds used so far by every `postgres` process on this machine (utime + stime, /proc). */
function postgresCpuMs(): number {
  const tick = 1000 / 100; // USER_HZ is 100 on Linux
  let ms = 0;
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (!stat.includes('(postgres)')) continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ms += (Number(f[11]) + Number(f[12])) * tick;
    } catch {
      // gone meanwhile
    }
  }
  return ms;
}

/** FLEET_CLUSTER=1: a bucket on the shared radosgw and an nginx for run i. */
async function clusterOptions(i: number): Promise<ClusterOptions> {
  const gw = await radosgw();
  if (typeof gw === 'string') throw new Error(`FLEET_CLUSTER=1: ${gw}`);
  const bucket = await newBucket(gw, `bench-${i}`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-bench-cdn-'));
  rmSync(dir, { recursive: true });
  return { store: `s3://${bucket}/rel`, env: gw.env, builders: 1, balancer: (origins) => startCdn(dir, origins) };
}

const results: SimulateResult[] = [];
const anchors: Array<Awaited<ReturnType<typeof openLoopFloor>>> = [];
console.log(
  `fleet bench: ${devices} devices, ${runs} run(s), target idle rate ${rate}/s, ${concurrency} connections; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}), nice ${os.getPriority()}, load ${load().join(' ')}`,
);
for (let i = 0; i < runs; i++) {
  const loadBefore = load();
  const started = new Date().toISOString();
  const databaseUrl = adminDatabaseUrl ? await freshDatabase(adminDatabaseUrl, `ibu_bench_fleet_${process.pid}_${i}`) : undefined;
  const r = await simulate({
    devices,
    rate,
    concurrency,
    databaseUrl,
    replicas,
    rampDevicesPerSecond: ramp,
    cluster: cluster ? await clusterOptions(i) : undefined,
    log: (m) => console.error(`  [run ${i + 1}] ${new Date().toISOString().slice(11, 19)} ${m}`),
  });
  const loadAfter = load();
  const anchor = await openLoopFloor(r.checkinsPerSec || rate, 20);
  results.push(r);
  anchors.push(anchor);
  console.log(
    JSON.stringify({
      run: i + 1,
      started,
      loadBefore,
      loadAfter,
      checkinsPerSec: r.checkinsPerSec,
      windows: r.windows,
      p50Ms: r.p50Ms,
      p99Ms: r.p99Ms,
      p99MsAll: r.p99MsAll,
      maxMs: r.maxMs,
      phases: r.phases,
      clientLagP99Ms: r.clientLagP99Ms,
      serverLag: r.serverLag,
      checkins: r.checkins,
      events: r.events,
      durationSeconds: r.durationSeconds,
      rolloutCompleted: r.rolloutCompleted,
      rolloutPausedCorrectly: r.rolloutPausedCorrectly,
      pauseReason: r.pauseReason,
      lostUpdates: r.lostUpdates,
      retries: r.retries,
      injected: r.injected,
      cpu: r.cpu,
      realServer: r.realServer,
      config: r.config,
      anchorOpenLoop: anchor,
    }),
  );
}
const capacity = await checkinCapacity(50_000);
// CPU per check-in on PostgreSQL beside SQLite (issue #21 item 7): the same hammer on a fresh database.
const capacityPostgres = adminDatabaseUrl ? await checkinCapacity(50_000, await freshDatabase(adminDatabaseUrl, `ibu_bench_cap_${process.pid}`)) : null;
// the same with FLEET_REPLICAS server processes on one fresh database (issue #21 item 7: 1 vs 2 api replicas)
const capacityReplicas =
  adminDatabaseUrl && replicas > 1 ? await checkinCapacity(50_000, await freshDatabase(adminDatabaseUrl, `ibu_bench_cap_r_${process.pid}`), replicas) : null;
const floor = await httpFloor(50_000);
const summary = {
  devices,
  runs,
  checkinsPerSec: median(results.map((r) => r.checkinsPerSec)),
  p50Ms: median(results.map((r) => r.p50Ms)),
  p99Ms: median(results.map((r) => r.p99Ms)),
  p99MsAll: median(results.map((r) => r.p99MsAll)),
  minWindowPerSec: median(results.map((r) => r.windows.minPerSec)),
  wallSeconds: median(results.map((r) => r.cpu.wallSeconds)),
  anchorOpenLoop: { perSec: median(anchors.map((a) => a.perSec)), p50Ms: median(anchors.map((a) => a.p50Ms)), p99Ms: median(anchors.map((a) => a.p99Ms)) },
  serverCpuPerCheckinMs: median(results.map((r) => (r.cpu.serverSeconds * 1000) / (r.checkins + r.events))),
  serverCpuShare: median(results.map((r) => r.cpu.serverSeconds / r.cpu.wallSeconds)),
  allCompleted: results.every((r) => r.rolloutCompleted),
  allPausedCorrectly: results.every((r) => r.rolloutPausedCorrectly),
  lostUpdates: results.reduce((n, r) => n + r.lostUpdates, 0),
  checkinCapacity: capacity,
  checkinCapacityPostgres: capacityPostgres,
  checkinCapacityReplicas: capacityReplicas,
  anchorHttpFloor: floor,
  load: load(),
};
console.log(JSON.stringify(summary));
