import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { runChild, type DeltaBuilder } from '../../src/server/delta-builder.js';
import { get, publisher, start, tmpDir, waitFor, type Running } from './helpers.js';

/**
 * Queue mechanics with builders that run real external commands (sh writing bytes, `false`),
 * standing in for makeDelta so that timing is controlled; delta-real.test.ts runs the real builder.
 */
function shellBuilder(counter: { n: number }, seconds: number, size = 200_000): DeltaBuilder {
  return async ({ out, signal }) => {
    counter.n++;
    // The trap passes the stop on to sleep, so an aborted build leaves no process behind.
    await runChild('sh', ['-c', `trap 'kill $p; exit 143' TERM; sleep ${seconds} & p=$!; wait $p; head -c ${size} /dev/urandom > "$1"`, 'sh', out], { signal });
  };
}

describe('delta queue: retries, failure, restart', () => {
  const work = tmpDir('queue');
  const store = path.join(work, 'store');
  const running: Running[] = [];

  before(async () => {
    const pub = await publisher(store, work);
    for (const v of ['1.0.1', '1.0.2', '1.0.3']) await pub.publish(v);
  });
  after(async () => {
    for (const s of running) await s.close();
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('retries a failing build with backoff, then reports it failed (500, state failed)', async () => {
    const calls: number[] = [];
    const failing: DeltaBuilder = async ({ signal }) => {
      calls.push(Date.now());
      await runChild('false', [], { signal });
    };
    const srv = await start({
      dataDir: store,
      precompute: 0,
      builder: failing,
      adminToken: 'tok',
      retry: { maxAttempts: 3, baseMs: 150, maxMs: 1000, failedCooldownMs: 60_000 },
    });
    running.push(srv);
    const first = await get(`${srv.url}/v1/deltas/1.0.1/1.0.3`);
    assert.equal(first.status, 202);
    const body = await waitFor(
      'failed state',
      async () => {
        const r = await get(`${srv.url}/v1/deltas/1.0.1/1.0.3`);
        return r.status === 500 ? r.json() : undefined;
      },
      30_000,
    );
    assert.equal(body.state, 'failed');
    assert.equal(body.attempts, 3);
    assert.match(String(body.error), /false/);
    assert.equal(calls.length, 3);
    // Backoff grows: the second gap is about 4x the first (150 ms, then 600 ms).
    assert.ok(calls[1]! - calls[0]! >= 140, `first retry after ${calls[1]! - calls[0]!} ms`);
    assert.ok(calls[2]! - calls[1]! >= 590, `second retry after ${calls[2]! - calls[1]!} ms`);
    // A failed pair stays failed for the cool-down; an admin can force a retry (checked elsewhere).
    assert.equal((await get(`${srv.url}/v1/deltas/1.0.1/1.0.3`)).status, 500);
    const retry = await get(`${srv.url}/v1/admin/deltas/1.0.1/1.0.3`, { authorization: 'Bearer tok' }, 'POST');
    assert.equal(retry.status, 202);
    assert.ok(['queued', 'building'].includes(String(retry.json().state)));
    await waitFor('failed again', async () => ((await srv.ctx.deltas.jobs.get('1.0.1', '1.0.3'))?.state === 'failed' ? true : undefined), 30_000);
    assert.equal(calls.length, 6);
    await srv.close();
  });

  it('resumes a build interrupted by a shutdown after a restart on the same directory', async () => {
    const counter = { n: 0 };
    const a = await start({ dataDir: store, precompute: 0, builder: shellBuilder(counter, 5) });
    running.push(a);
    assert.equal((await get(`${a.url}/v1/deltas/1.0.1/1.0.2`)).status, 202);
    await waitFor('build started', () => (counter.n === 1 ? true : undefined));
    // A temp file is being written; close mid-build.
    await new Promise((r) => setTimeout(r, 300));
    await a.close();
    const db = new Database(path.join(store, 'server.sqlite'), { readonly: true });
    const row = db.prepare("SELECT state, attempts FROM delta_jobs WHERE from_version = '1.0.1' AND to_version = '1.0.2'").get();
    db.close();
    assert.deepEqual(row, { state: 'queued', attempts: 0 });

    const b = await start({ dataDir: store, precompute: 0, builder: shellBuilder(counter, 0.2) });
    running.push(b);
    // No request needed: the queue itself picks the job up again.
    await waitFor('resumed build ready', async () => ((await b.ctx.deltas.jobs.get('1.0.1', '1.0.2'))?.state === 'ready' ? true : undefined), 30_000, 50);
    assert.equal(counter.n, 2, 'one interrupted build and one that finished');
    assert.equal((await get(`${b.url}/v1/deltas/1.0.1/1.0.2`)).body.length, 200_000);
    const leftovers = (await fsp.readdir(path.join(store, 'cache/deltas'))).filter((n) => n.endsWith('.partial'));
    assert.deepEqual(leftovers, []);
    await b.close();
  });
});
