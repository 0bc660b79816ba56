import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { applyDelta } from '../../src/delta/index.js';
import { storeDeltaBuilder } from '../../src/server/store-delta-builder.js';
import { StoreLayout } from '../../src/server/store-layout.js';
import type { DeltaBuilder } from '../../src/server/delta-builder.js';
import { cliCommand, get, publisher, sha256File, start, tmpDir, waitFor, type Running } from './helpers.js';

/** The real builder (images rebuilt from the store's chunks, then makeDelta), counted. */
function countedRealBuilder(store: string, counter: { n: number }): DeltaBuilder {
  const real = storeDeltaBuilder({ layout: new StoreLayout(store), imageCacheBytes: 1024 ** 3 });
  return async (req) => {
    counter.n++;
    await real(req);
  };
}

function dbRow(store: string, from: string, to: string): unknown {
  const db = new Database(path.join(store, 'server.sqlite'), { readonly: true });
  try {
    return db.prepare('SELECT state, attempts, builds FROM delta_jobs WHERE from_version = ? AND to_version = ?').get(from, to);
  } finally {
    db.close();
  }
}

/** Pids of delta-build-process children working on `store` (read from /proc, Linux). */
async function builderProcesses(store: string): Promise<number[]> {
  const pids: number[] = [];
  for (const p of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await fsp.readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes('delta-build-process') && cmd.includes(store)) pids.push(Number(p));
  }
  return pids;
}

describe('real deltas: one build for 1,000 devices, kill -9 during a build', () => {
  const work = tmpDir('real');
  const store = path.join(work, 'store');
  const images: Record<string, string> = {};
  const running: Running[] = [];

  before(async () => {
    const pub = await publisher(store, work);
    for (const v of ['1.0.1', '1.0.2', '1.0.3']) images[v] = await pub.publish(v);
  });
  after(async () => {
    for (const s of running) await s.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('answers 1,000 concurrent requests for a missing delta with one build: 202s, then 200s', async () => {
    const counter = { n: 0 };
    const srv = await start({ dataDir: store, precompute: 0, builder: countedRealBuilder(store, counter), retryAfterSeconds: 1 });
    running.push(srv);
    const url = `${srv.url}/v1/deltas/1.0.1/1.0.2`;
    // The first device finds nothing and gets a 202; 999 more arrive at once while it builds
    // (a fast build may already be done for the last of them: 200).
    const first = [await get(url)];
    assert.equal(first[0]!.status, 202);
    first.push(...(await Promise.all(Array.from({ length: 999 }, () => get(url)))));
    assert.ok(
      first.every((r) => r.status === 202 || r.status === 200),
      [...new Set(first.map((r) => r.status))].join(','),
    );
    assert.ok(first.filter((r) => r.status === 202).length >= 1);
    for (const r of first.filter((x) => x.status === 202)) {
      assert.ok(Number(r.headers['retry-after']) >= 1);
      assert.equal(r.headers['cache-control'], 'no-store');
      const b = r.json();
      assert.ok(b.state === 'queued' || b.state === 'building', String(b.state));
      assert.equal(typeof b.position, 'number');
    }
    // Devices keep polling until it is ready; every poll is 202 or 200, never another build.
    await waitFor(
      'ready',
      async () => {
        const polls = await Promise.all(Array.from({ length: 50 }, () => get(url, {}, 'HEAD')));
        assert.ok(polls.every((p) => p.status === 202 || p.status === 200));
        return polls.every((p) => p.status === 200) ? true : undefined;
      },
      120_000,
      250,
    );
    const second = await Promise.all(Array.from({ length: 1000 }, () => get(url)));
    assert.ok(second.every((r) => r.status === 200));
    assert.ok(second.every((r) => r.body.equals(second[0]!.body)));
    assert.equal(counter.n, 1, 'the builder ran once');
    assert.equal(srv.ctx.deltas.pool.buildsStarted, 1);
    assert.deepEqual(dbRow(store, '1.0.1', '1.0.2'), { state: 'ready', attempts: 1, builds: 1 });

    // The delta is a real one: applied to 1.0.1 it gives 1.0.2 bit for bit.
    const delta = path.join(work, 'got.ibudelta');
    await fsp.writeFile(delta, second[0]!.body);
    const out = path.join(work, 'applied.img');
    await applyDelta({ sourceImage: images['1.0.1']!, delta, out });
    assert.equal(await sha256File(out), await sha256File(images['1.0.2']!));
    await fsp.rm(out, { force: true });
    await srv.close();
  });

  it('finishes a build after the server is killed with -9 mid-build and started again', async () => {
    // A real `ibu serve` process, killed without warning while it builds.
    const child = spawn(
      process.execPath,
      [...cliCommand(), 'serve', '--data', store, '--listen', '127.0.0.1:0', '--no-fleet', '--precompute', '0', '--log-level', 'info'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let log = '';
    child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    try {
      const base = await waitFor('listening', () => /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(log)?.[1], 60_000);
      assert.equal((await get(`${base}/v1/deltas/1.0.2/1.0.3`)).status, 202);
      await waitFor('building', () => ((dbRow(store, '1.0.2', '1.0.3') as { state?: string })?.state === 'building' ? true : undefined), 30_000);
      // Let the build get going (image reconstruction in a child process) before the kill.
      await waitFor(
        'temp files',
        async () => {
          const names = [...(await fsp.readdir(path.join(store, 'cache/images'))), ...(await fsp.readdir(path.join(store, 'cache/deltas')))];
          return names.some((n) => n.endsWith('.partial')) ? true : undefined;
        },
        60_000,
        20,
      );
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    assert.deepEqual(dbRow(store, '1.0.2', '1.0.3'), { state: 'building', attempts: 1, builds: 1 });
    // The build's child processes notice their parent is gone and exit instead of writing on.
    await waitFor('no orphan builders', async () => ((await builderProcesses(store)).length === 0 ? true : undefined), 20_000, 100);
    // Whatever temp files the dead build left (a race decides which), plus one planted to be sure.
    await fsp.writeFile(path.join(store, 'cache/deltas/1.0.2_1.0.3.ibudelta.dead.partial'), 'torn');

    const counter = { n: 0 };
    const srv = await start({ dataDir: store, precompute: 0, builder: countedRealBuilder(store, counter) });
    running.push(srv);
    assert.equal(srv.startup.recoveredJobs, 1);
    assert.ok(srv.startup.partialsRemoved >= 1, 'start-up removes temp files of a dead build');
    await waitFor('resumed and ready', async () => ((await srv.ctx.deltas.jobs.get('1.0.2', '1.0.3'))?.state === 'ready' ? true : undefined), 120_000, 100);
    assert.equal(counter.n, 1);
    assert.deepEqual(dbRow(store, '1.0.2', '1.0.3'), { state: 'ready', attempts: 2, builds: 2 });
    const r = await get(`${srv.url}/v1/deltas/1.0.2/1.0.3`);
    assert.equal(r.status, 200);
    const delta = path.join(work, 'resumed.ibudelta');
    await fsp.writeFile(delta, r.body);
    const out = path.join(work, 'applied-2.img');
    await applyDelta({ sourceImage: images['1.0.2']!, delta, out });
    assert.equal(await sha256File(out), await sha256File(images['1.0.3']!));
    const partials = [...(await fsp.readdir(path.join(store, 'cache/deltas'))), ...(await fsp.readdir(path.join(store, 'cache/images')))].filter((n) =>
      n.endsWith('.partial'),
    );
    assert.deepEqual(partials, []);
    await srv.close();
  });
});
