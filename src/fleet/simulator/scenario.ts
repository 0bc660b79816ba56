import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { RolloutRecord } from '../types.js';
import type { SimClient } from './client.js';
import { BAD, BASE, ENROLLMENT_SECRET, GOOD, type SimDevice } from './device-model.js';
import { sleep } from './naps.js';

/**
 * The operator's side of the release day, over the admin API: set the fleet up, roll out the good
 * release (restarting the server midway), then a bad one that must pause itself, and at the end
 * compare what devices were told with what the server kept.
 */
export interface ScenarioContext {
  client: SimClient;
  dataDir: string;
  log: (msg: string) => void;
}

/** Fleet settings with compressed time, the releases as `ibu release publish` leaves them, the groups. */
export async function setUpFleet(c: ScenarioContext, o: { interval: number; active: number; maxReboots: number }): Promise<void> {
  await c.client.admin('PUT', '/v1/admin/fleet/settings', {
    checkinIntervalSeconds: o.interval,
    activeCheckinIntervalSeconds: o.active,
    jitter: 0.2,
    enrollmentSecret: ENROLLMENT_SECRET,
    evaluateEveryMs: 1000,
    defaultLeaseTtlSeconds: Math.max(60, o.interval),
  });
  // Releases come from the data dir like `ibu release publish` leaves them (channels/stable.json);
  // the stepping stone is marked mandatory through the admin API.
  await fsp.mkdir(path.join(c.dataDir, 'channels'), { recursive: true });
  await fsp.writeFile(path.join(c.dataDir, 'channels', 'stable.json'), JSON.stringify({ channel: 'stable', versions: [BASE, GOOD] }));
  await c.client.admin('POST', '/v1/admin/fleet/releases', { channel: 'stable', version: BASE });
  await c.client.admin('POST', '/v1/admin/fleet/releases', { channel: 'stable', version: GOOD });
  await c.client.admin('PUT', '/v1/admin/fleet/groups/canary', { maxConcurrentReboots: 0 });
  // Reboot leases pace the release day as they would in a real fleet: at most 10 % of the
  // fleet reboots at once; a device refused a lease comes back after a regular interval.
  await c.client.admin('PUT', '/v1/admin/fleet/groups/default', { maxConcurrentReboots: o.maxReboots, leaseTtlSeconds: Math.max(60, o.interval) });
}

/** `rampPercentPerMinute`: each wave opens gradually (0: at once). */
export function startGoodRollout(c: ScenarioContext, silentAfter: number, rampPercentPerMinute: number): Promise<RolloutRecord> {
  return c.client.admin<RolloutRecord>('POST', '/v1/admin/fleet/rollouts', {
    channel: 'stable',
    version: GOOD,
    // 1.3 % injected bad outcomes against a 5 % threshold: a sample of 100 keeps noise from pausing it.
    spec: {
      waves: [1, 10, 50, 100],
      canaryGroups: ['canary'],
      successRatio: 0.95,
      maxFailureRatio: 0.05,
      minSample: 100,
      silentAfterSeconds: silentAfter,
      rampPercentPerMinute,
    },
  });
}

/** Polls a rollout until it stops running or the deadline passes; `each` runs after every poll. */
export async function watchRollout(
  c: ScenarioContext,
  start: RolloutRecord,
  deadline: number,
  each: (r: RolloutRecord) => Promise<void> = async () => {},
): Promise<RolloutRecord> {
  let r = start;
  while (Date.now() < deadline) {
    await sleep(1000);
    r = await c.client.admin<RolloutRecord>('GET', `/v1/admin/fleet/rollouts/${start.id}?brief=1`);
    await each(r);
    if (r.state !== 'running') break;
  }
  return r;
}

/** Publishes the bad release and rolls it out; it must pause itself inside its first wave. */
export async function rollOutBadRelease(c: ScenarioContext, silentAfter: number, deadline: number): Promise<RolloutRecord> {
  await fsp.writeFile(path.join(c.dataDir, 'channels', 'stable.json'), JSON.stringify({ channel: 'stable', versions: [BASE, GOOD, BAD] }));
  await c.client.admin('POST', '/v1/admin/fleet/releases', { channel: 'stable', version: BAD });
  const r2 = await c.client.admin<RolloutRecord>('POST', '/v1/admin/fleet/rollouts', {
    channel: 'stable',
    version: BAD,
    spec: { waves: [5, 50, 100], canaryGroups: [], successRatio: 0.95, maxFailureRatio: 0.1, minSample: 20, silentAfterSeconds: silentAfter },
  });
  const end = await watchRollout(c, r2, deadline);
  c.log(`rollout ${end.id}: ${end.state}${end.reason ? ` (${end.reason})` : ''}`);
  return end;
}

/** Devices whose last acknowledged check-in the server does not show (or that it does not know at all). */
export async function countLostUpdates(c: ScenarioContext, devices: readonly SimDevice[]): Promise<number> {
  let lost = 0;
  const byId = new Map(devices.map((d) => [d.id, d]));
  let after = '';
  let seen = 0;
  for (;;) {
    const page = await c.client.admin<{
      devices: Array<{ id: string; version: string | null; state: string | null; trial: boolean; checkins: number }>;
      next: string | null;
    }>('GET', `/v1/admin/fleet/devices?after=${encodeURIComponent(after)}&limit=10000`);
    for (const s of page.devices) {
      const d = byId.get(s.id);
      if (!d) continue;
      seen++;
      const a = d.acked;
      // Behind what was acknowledged: lost. A different state is lost too, unless a later check-in is
      // still on its way back (the server committed it and is ahead: an overloaded run's end).
      const ahead = d.checkinInFlight && s.checkins === d.ackCount + 1;
      if (s.checkins < d.ackCount || (a && !ahead && (s.version !== a.version || s.state !== a.state || s.trial !== a.trial))) lost++;
    }
    if (!page.next || page.devices.length === 0) break;
    after = page.next;
  }
  return lost + devices.length - seen;
}
