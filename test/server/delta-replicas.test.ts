import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import pg from 'pg';
import { applyDelta } from '../../src/delta/index.js';
import { cliCommand, get, publisher, scratchDatabase, sha256File, tmpDir, waitFor } from './helpers.js';

/**
 * Delta builders as a pool (issue #21 item 2): three real `ibu serve` processes on one real
 * PostgreSQL (IBU_TEST_PG) — one `--role api`, two `--role builder` — sharing the delta queue and
 * one delta directory (`--delta-dir`). 1,000 concurrent requests for a new pair, spread over the
 * three, make exactly one build; a builder killed with -9 mid-build loses its claim when its
 * lease (2 s here) runs out, and the other builder builds the delta. Real releases, the real
 * builder; each delta is applied and checked against its target image.
 */
const pgSkip = !process.env.IBU_TEST_PG && !process.env.CI ? 'needs IBU_TEST_PG (bash scripts/postgres.sh start)' : false;
const LEASE_S = 2;

interface Replica {
  name: string;
  data: string;
  child: ChildProcess;
  log: () => string;
  url: string;
}

describe('delta builders as a pool for replicas on PostgreSQL: --role api|builder', { skip: pgSkip }, () => {
  const work = tmpDir('pool');
  const store = path.join(work, 'store');
  const shared = path.join(work, 'shared-deltas');
  const images: Record<string, string> = {};
  const replicas: Replica[] = [];
  let db: { url: string; drop: () => Promise<void> };
  let sql: pg.Client;

  async function launch(name: string, role: 'api' | 'builder'): Promise<Replica> {
    const data = path.join(work, name);
    // Each replica has its own data directory (its lock, image cache, SQLite for precompute); the
    // release store is copied, as `ibu release publish` to each would.
    await fsp.cp(store, data, { recursive: true });
    const args = ['serve', '--data', data, '--listen', '127.0.0.1:0', '--role', role, '--database-url', db.url, '--delta-dir', shared];
    args.push('--delta-lease', String(LEASE_S), '--precompute', '0', '--admin-token', 'tok', '--log-level', 'info');
    const child = spawn(process.execPath, [...cliCommand(), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    const url = await waitFor(`${name} listening`, () => /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(log)?.[1], 60_000);
    const r: Replica = { name, data, child, log: () => log, url };
    replicas.push(r);
    return r;
  }

  const row = async (from: string, to: string) =>
    (await sql.query('SELECT state, attempts, builds, claimed_by FROM delta_jobs WHERE from_version = $1 AND to_version = $2', [from, to])).rows[0] as
      { state: string; attempts: number; builds: number; claimed_by: string | null } | undefined;
  const starts = (r: Replica): number =>
    r
      .log()
      .split('\n')
      .filter((l) => l.includes('"delta build started"')).length;

  /** Fetches the built delta through `via` and checks it turns `from`'s image into `to`'s. */
  async function verify(via: Replica, from: string, to: string): Promise<void> {
    const r = await get(`${via.url}/v1/deltas/${from}/${to}`);
    assert.equal(r.status, 200);
    const delta = path.join(work, `${from}_${to}.ibudelta`);
    await fsp.writeFile(delta, r.body);
    const out = path.join(work, `${from}_${to}.img`);
    await applyDelta({ sourceImage: images[from]!, delta, out });
    assert.equal(await sha256File(out), await sha256File(images[to]!));
  }

  before(async () => {
    db = await scratchDatabase('pool');
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
    const pub = await publisher(store, work);
    for (const v of ['1.0.1', '1.0.2', '1.0.3']) images[v] = await pub.publish(v);
    await fsp.mkdir(shared, { recursive: true });
    // The api replica first: it creates the schema and binds the shared delta directory.
    await launch('api', 'api');
    await Promise.all([launch('builder-a', 'builder'), launch('builder-b', 'builder')]);
  });

  after(async () => {
    for (const r of replicas) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGTERM');
    await Promise.all(replicas.map((r) => (r.child.exitCode === null && r.child.signalCode === null ? new Promise((res) => r.child.once('exit', res)) : 0)));
    await sql?.end();
    await db?.drop();
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('1,000 concurrent requests for a new pair across the replicas make exactly one build', async () => {
    const t0 = performance.now();
    const answers = await Promise.all(Array.from({ length: 1000 }, (_, i) => get(`${replicas[i % 3]!.url}/v1/deltas/1.0.1/1.0.2`)));
    const ms = performance.now() - t0;
    const by = new Map<number, number>();
    for (const a of answers) by.set(a.status, (by.get(a.status) ?? 0) + 1);
    console.log(`# 1,000 requests over 3 replicas in ${ms.toFixed(0)} ms: ${JSON.stringify(Object.fromEntries(by))}`);
    // Every answer is "building it" (or, for a late one, the delta itself); none refused, none failed.
    assert.ok(answers.every((a) => a.status === 202 || a.status === 200));
    const api = replicas[0]!;
    await waitFor('built', async () => ((await row('1.0.1', '1.0.2'))?.state === 'ready' ? true : undefined), 120_000, 100);
    assert.deepEqual(await row('1.0.1', '1.0.2'), { state: 'ready', attempts: 1, builds: 1, claimed_by: null });
    assert.equal(starts(replicas[1]!) + starts(replicas[2]!), 1, 'one build across both builders');
    assert.equal(starts(api), 0, 'the api replica builds nothing');
    // The builder wrote into the shared directory; the api replica serves it from there.
    await verify(api, '1.0.1', '1.0.2');
    const again = await get(`${api.url}/v1/deltas/1.0.1/1.0.2`);
    assert.equal(again.status, 200);
    assert.equal((await row('1.0.1', '1.0.2'))?.builds, 1);
    // Every replica reports the same queue scope (the shared directory's id).
    const scopes = new Set<unknown>();
    for (const r of replicas) scopes.add((await get(`${r.url}/v1/admin/cache`, { authorization: 'Bearer tok' })).json().queue);
    assert.equal(scopes.size, 3, 'three answers');
    assert.equal(new Set([...scopes].map((q) => JSON.stringify(q))).size, 1, 'one queue');
  });

  it('a builder killed with -9 mid-build loses its claim when its lease runs out; the other builds the delta', async () => {
    const api = replicas[0]!;
    assert.equal((await get(`${api.url}/v1/deltas/1.0.2/1.0.3`)).status, 202);
    const claimed = await waitFor('claimed', async () => {
      const r = await row('1.0.2', '1.0.3');
      return r?.state === 'building' && r.claimed_by ? r.claimed_by : undefined;
    });
    // claimed_by is host:pid:random: the pid names the builder to kill.
    const pid = Number(claimed.split(':')[1]);
    const victim = replicas.find((r) => r.child.pid === pid)!;
    const other = replicas.find((r) => r !== victim && r.name.startsWith('builder'))!;
    assert.ok(victim && victim.name.startsWith('builder'), `claimed by ${claimed}`);
    // Let the build get going (images reconstructed in child processes) before the kill.
    await waitFor(
      'build under way',
      async () => {
        const names = [...(await fsp.readdir(path.join(victim.data, 'cache/images'))), ...(await fsp.readdir(shared))];
        return names.some((n) => n.endsWith('.partial')) ? true : undefined;
      },
      60_000,
      10,
    );
    victim.child.kill('SIGKILL');
    await new Promise((r) => victim.child.once('exit', r));
    const killedAt = performance.now();
    assert.equal((await row('1.0.2', '1.0.3'))?.state, 'building', 'killed mid-build');

    const taken = await waitFor('taken over', async () => {
      const r = await row('1.0.2', '1.0.3');
      return r?.claimed_by && r.claimed_by !== claimed ? r : r?.state === 'ready' ? r : undefined;
    });
    const takeoverMs = performance.now() - killedAt;
    await waitFor('built by the other', async () => ((await row('1.0.2', '1.0.3'))?.state === 'ready' ? true : undefined), 120_000, 100);
    console.log(`# claim taken over ${takeoverMs.toFixed(0)} ms after the kill (lease ${LEASE_S} s); state then: ${taken.state}`);
    assert.ok(takeoverMs >= 0);
    const done = (await row('1.0.2', '1.0.3'))!;
    assert.deepEqual([done.state, done.attempts, done.builds], ['ready', 2, 2], 'the dead attempt counted, then one more');
    assert.ok(starts(other) >= 1);
    await verify(api, '1.0.2', '1.0.3');
  });

  it('a builder stopped with SIGTERM mid-build gives the job back at once; another builder claims it, no attempt counted', async () => {
    const api = replicas[0]!;
    await launch('builder-c', 'builder');
    assert.equal((await get(`${api.url}/v1/deltas/1.0.1/1.0.3`)).status, 202);
    const claimed = await waitFor('claimed', async () => {
      const r = await row('1.0.1', '1.0.3');
      return r?.state === 'building' && r.claimed_by ? r.claimed_by : undefined;
    });
    const stopping = replicas.find((r) => r.child.pid === Number(claimed.split(':')[1]))!;
    assert.ok(stopping.name.startsWith('builder'));
    const t0 = performance.now();
    stopping.child.kill('SIGTERM');
    const next = await waitFor('claimed by another', async () => {
      const r = await row('1.0.1', '1.0.3');
      return r?.claimed_by && r.claimed_by !== claimed ? r : r?.state === 'ready' && r.builds > 1 ? r : undefined;
    });
    const ms = performance.now() - t0;
    console.log(`# after SIGTERM the job was claimed by another builder in ${ms.toFixed(0)} ms (no lease to wait out)`);
    assert.equal(next.attempts, 1, 'a shutdown does not count an attempt');
    await new Promise((r) => (stopping.child.exitCode === null ? stopping.child.once('exit', r) : r(0)));
    await waitFor('built', async () => ((await row('1.0.1', '1.0.3'))?.state === 'ready' ? true : undefined), 120_000, 100);
    await verify(api, '1.0.1', '1.0.3');
  });

  it('refuses --role api or builder without the shared queue (exit status 2)', async () => {
    const child = spawn(process.execPath, [...cliCommand(), 'serve', '--data', store, '--role', 'builder'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    assert.equal(code, 2);
    assert.match(out, /--role builder needs --database-url/);
  });
});
