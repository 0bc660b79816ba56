/**
 * Image server benchmark (docs/benchmarks.md, "## Image server"):
 *   - chunk serving throughput and latency, `ibu serve` beside nginx serving the same files;
 *   - delta status requests per second: the 202 path (queued) and the 200 HEAD path (ready).
 * Loopback, same run, wrk as the load generator, median of 3 runs of each.
 *
 *   npm run bench:server [-- --seconds 10 --connections 32 --image-mib 256]
 *
 * Needs nginx and wrk (`apt-get install -y nginx-light wrk`; this script installs them when
 * missing and it runs as root). Not part of CI.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { generateKeys } from '../src/release/keys.js';
import { publishRelease } from '../src/release/publish.js';
import { LocalStore } from '../src/store/local-store.js';
import { childExecArgv } from '../src/server/store-delta-builder.js';
import { run } from '../src/util/exec.js';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    connections: { type: 'string', default: '32' },
    'image-mib': { type: 'string', default: '256' },
    runs: { type: 'string', default: '3' },
    keep: { type: 'boolean', default: false },
  },
});
let SECONDS = Number(args.seconds);
const CONNS = Number(args.connections);
const IMAGE_MIB = Number(args['image-mib']);
const RUNS = Number(args.runs);
const repo = path.resolve(import.meta.dirname, '..');

function ensureTools(): void {
  const missing = ['nginx', 'wrk'].filter((t) => spawnSync('sh', ['-c', `command -v ${t} || test -x /usr/sbin/${t}`]).status !== 0);
  if (missing.length === 0) return;
  console.error(`installing ${missing.join(' ')} (apt-get)`);
  const pkgs = missing.map((m) => (m === 'nginx' ? 'nginx-light' : m));
  const r = spawnSync('apt-get', ['install', '-y', ...pkgs], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`install ${pkgs.join(' ')} first: apt-get install -y ${pkgs.join(' ')}`);
}

/** A tree of random-ish files (incompressible, like binaries) totalling about `mib`. */
async function makeTree(dir: string, mib: number, variant: number): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  const { randomBytes, createHash } = await import('node:crypto');
  for (let i = 0; i < mib; i++) {
    const sub = path.join(dir, `d${i % 16}`);
    await fsp.mkdir(sub, { recursive: true });
    // Every 10th file changes in the second release.
    const changed = variant > 1 && i % 10 === 0;
    const seed = createHash('sha256')
      .update(`f${i}${changed ? `v${variant}` : ''}`)
      .digest();
    const data = Buffer.alloc(1024 * 1024);
    for (let o = 0; o < data.length; o += 32) createHash('sha256').update(seed).update(String(o)).digest().copy(data, o);
    if (changed) randomBytes(16).copy(data, 0);
    await fsp.writeFile(path.join(sub, `f${i}.bin`), data);
  }
}

async function buildStore(work: string): Promise<{ store: string; ids: string[] }> {
  const store = path.join(work, 'store');
  const keys = await generateKeys(path.join(work, 'keys'));
  for (const [v, n] of [
    ['1.0.0', 1],
    ['1.0.1', 2],
  ] as const) {
    const tree = path.join(work, `tree-${n}`);
    await makeTree(tree, IMAGE_MIB, n);
    const img = path.join(work, `${v}.img`);
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-d', tree, img, `${Math.ceil(IMAGE_MIB * 1.3) + 16}M`]);
    await publishRelease({ image: img, version: v, store: new LocalStore(store), keyFiles: [keys.privateKeyPath], channel: 'stable', requireKernel: false });
    await fsp.rm(tree, { recursive: true, force: true });
    await fsp.rm(img, { force: true });
  }
  const m = JSON.parse(await fsp.readFile(path.join(store, 'releases/1.0.1/manifest.json'), 'utf8')) as { chunks: Array<{ id: string; zero?: boolean }> };
  const ids = [...new Set(m.chunks.filter((c) => !c.zero && !/^0+$/.test(c.id)).map((c) => c.id))];
  return { store, ids };
}

async function startIbu(store: string, port: number, workers: number): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [
      ...childExecArgv(),
      path.join(repo, 'bench/lib/ibu-dev.ts'),
      'serve',
      '--data',
      store,
      '--listen',
      `127.0.0.1:${port}`,
      '--workers',
      String(workers),
      '--precompute',
      '0',
      '--log-level',
      'warn',
      '--no-fleet',
    ],
    {
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  await waitHttp(`http://127.0.0.1:${port}/v1/channels/stable/releases`);
  return child;
}

async function waitHttp(url: string, ok = (s: number) => s === 200, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await fetch(url);
      await r.arrayBuffer();
      if (ok(r.status)) return;
    } catch {
      // not up yet
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${url}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

async function startNginx(work: string, store: string, port: number): Promise<{ stop: () => Promise<void> }> {
  const conf = path.join(work, 'nginx.conf');
  // One worker: the same single event loop ibu serve runs on. Same headers as ibu for chunks.
  await fsp.writeFile(
    conf,
    `worker_processes 1;
pid ${work}/nginx.pid;
error_log ${work}/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path ${work}/nginx-tmp; proxy_temp_path ${work}/nginx-tmp; fastcgi_temp_path ${work}/nginx-tmp;
  uwsgi_temp_path ${work}/nginx-tmp; scgi_temp_path ${work}/nginx-tmp;
  server {
    listen 127.0.0.1:${port};
    location ~ "^/v1/chunks/([0-9a-f]{4})([0-9a-f]{60})$" {
      alias ${store}/chunks/$1/$1$2.zst;
      default_type application/zstd;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
`,
  );
  await fsp.mkdir(path.join(work, 'nginx-tmp'), { recursive: true });
  await run('nginx', ['-c', conf, '-p', work]);
  return {
    stop: async () => {
      await run('nginx', ['-c', conf, '-p', work, '-s', 'stop']).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 300));
    },
  };
}

interface WrkResult {
  rps: number;
  mbps: number;
  p50ms: number;
  p99ms: number;
  non2xx: number;
}

function ms(s: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(s.trim());
  if (!m) return NaN;
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : m[2] === 's' ? n * 1000 : n;
}

async function wrk(url: string, script: string, work: string): Promise<WrkResult> {
  const lua = path.join(work, `wrk-${Math.random().toString(36).slice(2)}.lua`);
  await fsp.writeFile(lua, script);
  const r = await run('wrk', ['-t', '1', '-c', String(CONNS), '-d', `${SECONDS}s`, '--latency', '-s', lua, url]);
  const out = r.stdout;
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const tr = /Transfer\/sec:\s+([\d.]+)([KMG]B)/.exec(out);
  const mbps = tr ? Number(tr[1]) * ({ KB: 1 / 1024, MB: 1, GB: 1024 } as Record<string, number>)[tr[2]!]! : NaN;
  const p50 = ms(/50%\s+(\S+)/.exec(out)?.[1] ?? '');
  const p99 = ms(/99%\s+(\S+)/.exec(out)?.[1] ?? '');
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  return { rps, mbps: mbps * 1.048576, p50ms: p50, p99ms: p99, non2xx };
}

/**
 * wrk cannot do HEAD (it waits for the body the Content-Length announces) and undici opens a new
 * connection for every HEAD, so the status paths are measured with node:http and a keep-alive
 * agent from this process: `CONNS` connections, each sending the next request as soon as the
 * previous answer is in, for `SECONDS`.
 */
async function nodeLoad(url: string, method: 'GET' | 'HEAD'): Promise<WrkResult> {
  const http = await import('node:http');
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS });
  const lat: number[] = [];
  let non2xx = 0;
  let bytes = 0;
  const one = () =>
    new Promise<void>((resolve, reject) => {
      const s = performance.now();
      const req = http.request(url, { method, agent }, (res) => {
        res.on('data', (d: Buffer) => (bytes += d.length));
        res.on('end', () => {
          if ((res.statusCode ?? 500) >= 400) non2xx++;
          lat.push(performance.now() - s);
          resolve();
        });
      });
      req.on('error', reject);
      req.end();
    });
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONNS }, async () => {
      while (performance.now() < end) await one();
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  agent.destroy();
  lat.sort((a, b) => a - b);
  return { rps: lat.length / secs, mbps: bytes / secs / 1e6, p50ms: lat[Math.floor(lat.length * 0.5)]!, p99ms: lat[Math.floor(lat.length * 0.99)]!, non2xx };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
function med(rs: WrkResult[]): WrkResult {
  return {
    rps: median(rs.map((r) => r.rps)),
    mbps: median(rs.map((r) => r.mbps)),
    p50ms: median(rs.map((r) => r.p50ms)),
    p99ms: median(rs.map((r) => r.p99ms)),
    non2xx: Math.max(...rs.map((r) => r.non2xx)),
  };
}

function chunkScript(ids: string[]): string {
  return `local ids = {${ids.map((i) => `"${i}"`).join(',')}}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/chunks/" .. ids[(n % #ids) + 1])
end
`;
}

async function main(): Promise<void> {
  ensureTools();
  const work = mkdtempSync(path.join(os.tmpdir(), 'ibu-bench-server-'));
  // nginx workers run as www-data: they must be able to read the store.
  await fsp.chmod(work, 0o755);
  try {
    console.error(`building and publishing two ${IMAGE_MIB} MiB releases in ${work} ...`);
    const { store, ids } = await buildStore(work);
    const sizes = await Promise.all(ids.map(async (id) => (await fsp.stat(path.join(store, 'chunks', id.slice(0, 4), `${id}.zst`))).size));
    const avgKiB = sizes.reduce((a, b) => a + b, 0) / sizes.length / 1024;
    const ibuPort = 18000 + Math.floor(Math.random() * 1000);
    const nginxPort = ibuPort + 1000;

    // Build the 1.0.0 -> 1.0.1 delta once (real builder), so the HEAD 200 path has a ready delta.
    console.error('building the delta 1.0.0 -> 1.0.1 ...');
    let ibu = await startIbu(store, ibuPort, 1);
    const t0 = Date.now();
    await waitHttp(`http://127.0.0.1:${ibuPort}/v1/deltas/1.0.0/1.0.1`, (s) => s === 200, 30 * 60_000);
    const buildSeconds = (Date.now() - t0) / 1000;
    await stop(ibu);
    const deltaBytes = (await fsp.stat(path.join(store, 'cache/deltas/1.0.0_1.0.1.ibudelta'))).size;

    // Measurement server: --workers 0, so a newly asked pair stays queued (the 202 path).
    ibu = await startIbu(store, ibuPort, 0);
    const nginx = await startNginx(work, store, nginxPort);
    const rows: Record<string, WrkResult[]> = { ibuChunks: [], nginxChunks: [], status202: [], head200: [], status202node: [] };
    try {
      // Warm-up (JIT, page cache) for both servers, not counted.
      const secs = SECONDS;
      SECONDS = Math.min(3, secs);
      await wrk(`http://127.0.0.1:${nginxPort}`, chunkScript(ids), work);
      await wrk(`http://127.0.0.1:${ibuPort}`, chunkScript(ids), work);
      await nodeLoad(`http://127.0.0.1:${ibuPort}/v1/deltas/1.0.0/1.0.1`, 'HEAD');
      SECONDS = secs;
      for (let i = 0; i < RUNS; i++) {
        rows.nginxChunks!.push(await wrk(`http://127.0.0.1:${nginxPort}`, chunkScript(ids), work));
        rows.ibuChunks!.push(await wrk(`http://127.0.0.1:${ibuPort}`, chunkScript(ids), work));
        rows.status202!.push(await wrk(`http://127.0.0.1:${ibuPort}`, 'request = function() return wrk.format("GET", "/v1/deltas/1.0.1/1.0.0") end\n', work));
        rows.head200!.push(await nodeLoad(`http://127.0.0.1:${ibuPort}/v1/deltas/1.0.0/1.0.1`, 'HEAD'));
        rows.status202node!.push(await nodeLoad(`http://127.0.0.1:${ibuPort}/v1/deltas/1.0.1/1.0.0`, 'GET'));
      }
    } finally {
      await nginx.stop();
      await stop(ibu);
    }
    const cpu = os.cpus()[0]?.model ?? 'unknown';
    const result = {
      machine: { cpus: os.cpus().length, cpu, node: process.version, kernel: os.release() },
      inputs: {
        imageMiB: IMAGE_MIB,
        chunks: ids.length,
        avgChunkKiB: Number(avgKiB.toFixed(1)),
        seconds: SECONDS,
        connections: CONNS,
        runs: RUNS,
        deltaBytes,
        deltaBuildSeconds: buildSeconds,
      },
      median: Object.fromEntries(Object.entries(rows).map(([k, v]) => [k, med(v)])),
      runs: rows,
    };
    console.log(JSON.stringify(result, null, 2));
    const m = result.median as Record<string, WrkResult>;
    const line = (name: string, r: WrkResult, mb = true) =>
      `| ${name} | ${r.rps.toFixed(0)} | ${mb ? r.mbps.toFixed(0) : '–'} | ${r.p50ms.toFixed(2)} | ${r.p99ms.toFixed(2)} |`;
    console.log(
      [
        '',
        '| server, path | req/s | MB/s | p50 ms | p99 ms |',
        '|---|---|---|---|---|',
        line('nginx 1 worker, GET chunk', m.nginxChunks!),
        line('ibu serve, GET chunk', m.ibuChunks!),
        line('ibu serve, GET delta (202 queued), wrk', m.status202!, false),
        line('ibu serve, GET delta (202 queued), node:http', m.status202node!, false),
        line('ibu serve, HEAD delta (200 ready), node:http', m.head200!, false),
      ].join('\n'),
    );
    if (m.status202!.non2xx > 0 || m.ibuChunks!.non2xx > 0 || m.nginxChunks!.non2xx > 0) console.error('warning: non-2xx responses seen', m);
  } finally {
    if (!args.keep) await fsp.rm(work, { recursive: true, force: true });
    spawnSync('true');
  }
}

await main();
