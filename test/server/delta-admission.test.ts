import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { openDb } from '../../src/server/db.js';
import { ADMISSION_DEFAULTS, admit, clientKey, onPublishedPath, type Demand } from '../../src/server/delta-admission.js';
import { DeltaDemand } from '../../src/server/delta-demand.js';
import { DeltaJobs, PRIORITY, type QueueFacts } from '../../src/server/delta-jobs.js';
import { tmpDir } from './helpers.js';

const L = { maxQueued: 10, perClient: 2 };

describe('admit (pure): who may add a delta build', () => {
  const cases: Array<[string, Demand, QueueFacts, string]> = [
    ['needed, room', 'device', { queued: 3, clientHeld: 9, evictable: false }, `admit ${PRIORITY.device}`],
    ['needed by the path, room', 'path', { queued: 9, clientHeld: 0, evictable: false }, `admit ${PRIORITY.device}`],
    ['needed, full, a flood job to displace', 'device', { queued: 10, clientHeld: 0, evictable: true }, `admit ${PRIORITY.device} evict`],
    ['needed, full of needed jobs', 'device', { queued: 10, clientHeld: 0, evictable: false }, 'DELTA_QUEUE_FULL'],
    ['unneeded, under the cap', 'none', { queued: 0, clientHeld: 1, evictable: false }, `admit ${PRIORITY.unneeded}`],
    ['unneeded, at the cap', 'none', { queued: 0, clientHeld: 2, evictable: false }, 'DELTA_CLIENT_LIMIT'],
    ['unneeded, queue full', 'none', { queued: 10, clientHeld: 0, evictable: true }, 'DELTA_QUEUE_FULL'],
  ];
  for (const [what, demand, facts, want] of cases)
    it(what, () => {
      const a = admit(demand, facts, L);
      assert.equal(a.admit ? `admit ${a.priority}${a.evict ? ' evict' : ''}` : a.code, want);
      if (!a.admit) assert.match(a.message, /chunks/, 'the refusal says what to do next');
    });

  it('has sane defaults', () => {
    assert.ok(ADMISSION_DEFAULTS.maxQueued >= 64 && ADMISSION_DEFAULTS.perClient >= 1);
  });
});

describe('onPublishedPath and clientKey (pure)', () => {
  it('a pair is on the path when it leads into the newest release of a channel listing both', () => {
    const stable = ['1.0', '1.1', '2.0'];
    const beta = ['2.0', '2.1-rc1'];
    assert.equal(onPublishedPath([stable, beta], '1.0', '2.0'), true);
    assert.equal(onPublishedPath([stable, beta], '1.1', '2.0'), true);
    assert.equal(onPublishedPath([stable, beta], '1.0', '1.1'), false, 'not the newest');
    assert.equal(onPublishedPath([stable, beta], '2.0', '1.0'), false, 'a rollback');
    assert.equal(onPublishedPath([stable, beta], '2.0', '2.1-rc1'), true);
    assert.equal(onPublishedPath([stable, beta], '1.0', '2.1-rc1'), false, 'across channels');
  });

  it('counts a client by its address, an IPv6 host by its /64', () => {
    assert.equal(clientKey('10.0.0.7'), '10.0.0.7');
    assert.equal(clientKey('::ffff:10.0.0.7'), '10.0.0.7');
    assert.equal(clientKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
    assert.equal(clientKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
    assert.equal(clientKey('2001:db8::1'), '2001:db8:0:0::/64');
    assert.equal(clientKey('::1'), '0:0:0:0::/64');
  });
});

describe('DeltaJobs.admitRequest and DeltaDemand (server.sqlite)', () => {
  const dir = tmpDir('admission');
  const db = openDb(path.join(dir, 'server.sqlite'));
  const jobs = new DeltaJobs(db);
  after(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const gate = (demand: Demand) => (f: QueueFacts) => admit(demand, f, { maxQueued: 3, perClient: 2 });

  it('caps one client, bounds the queue, lets a needed pair displace the newest unneeded job', async () => {
    const ask = (from: string, client: string, demand: Demand, now: number) =>
      jobs.admitRequest(from, 'z', demand === 'none' ? PRIORITY.unneeded : PRIORITY.device, now, { client, admit: gate(demand) });
    assert.ok('job' in (await ask('a', 'c1', 'none', 1)));
    assert.ok('job' in (await ask('b', 'c1', 'none', 2)));
    const capped = await ask('c', 'c1', 'none', 3);
    assert.ok('refused' in capped && capped.refused.code === 'DELTA_CLIENT_LIMIT');
    assert.equal(await jobs.get('c', 'z'), undefined, 'a refusal writes nothing');
    // Asking again for a pair already queued costs nothing (no admission, no refusal).
    assert.ok('job' in (await ask('a', 'c1', 'none', 4)));
    assert.ok('job' in (await ask('d', 'c2', 'none', 5)));
    const full = await ask('e', 'c3', 'none', 6);
    assert.ok('refused' in full && full.refused.code === 'DELTA_QUEUE_FULL');
    const needed = await ask('n', 'c1', 'device', 7);
    assert.ok('job' in needed && needed.evicted?.from === 'd', 'the newest unneeded job makes room');
    assert.equal((await jobs.counts()).queued, 3);
    assert.equal(await jobs.position((await jobs.get('n', 'z'))!), 0);
    assert.equal((await jobs.get('n', 'z'))!.client, null, 'a needed job counts against no client');
  });

  it('remembers the pairs check-ins named, across a reopen, until they are older than the TTL', async () => {
    const catalog = { channels: async () => [] as string[], channel: async () => undefined };
    const demand = new DeltaDemand(jobs, catalog, () => true, 1000);
    assert.equal(await demand.of('1', '2', 10), 'none');
    await demand.note('1', '2', 10);
    const reopened = new DeltaDemand(new DeltaJobs(db), catalog, () => true, 1000);
    assert.equal(await reopened.of('1', '2', 500), 'device');
    assert.equal(await reopened.of('1', '2', 2000), 'none');
    // Without a fleet the published path stands in for the devices.
    const fleetless = new DeltaDemand(
      jobs,
      { channels: async () => ['s'], channel: async () => ({ channel: 's', releases: [{ version: '1' }, { version: '3' }] }) },
      () => false,
    );
    assert.equal(await fleetless.of('1', '3'), 'path');
    assert.equal(await fleetless.of('3', '1'), 'none');
  });
});
