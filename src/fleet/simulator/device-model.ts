import { newDeviceKey, signEnrollment } from '../device-proof.js';
import type { CheckinRequest, CheckinResponse, DeviceEvent, DeviceState } from '../protocol.js';
import type { SimClient } from './client.js';
import type { Naps } from './naps.js';
import type { Measurements } from './report.js';

export const BASE = '1.0.0';
export const GOOD = '2.0.0';
export const BAD = '2.1.0';
export const ENROLLMENT_SECRET = 'simulated-fleet';

/** What happens to one upgrade of a device: injected failures are one-shot, the retry works. */
export type Mode = 'ok' | 'fail' | 'rollback' | 'silent';

export interface SimDevice {
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
  /** A check-in sent and not answered yet: the server may already hold it (it is ahead, not behind). */
  checkinInFlight: boolean;
  dead: boolean;
  attempts: Map<string, number>;
}

export interface DeviceModelOptions {
  /** Idle and active check-in intervals (seconds): downloads and reboots take a share of them. */
  interval: number;
  active: number;
  failRatio: number;
  rollbackRatio: number;
  silentRatio: number;
  /** Rollback share on the bad release. */
  badRollbackRatio: number;
}

/**
 * The simulated devices: each behaves like upgradectl (check in on the server's schedule,
 * prepare, ask for a reboot lease, apply, reboot, confirm or roll back) with failures injected
 * by chance, and speaks the real protocol through the client.
 */
export class DeviceModel {
  /** One key for every simulated device: the server verifies a proof per enrollment either way, and 80,000 key pairs would only slow the set-up. */
  private readonly key = newDeviceKey();
  readonly injected = { failed: 0, rolledBack: 0, silent: 0, badRolledBack: 0 };

  constructor(
    private readonly client: SimClient,
    private readonly naps: Naps,
    private readonly m: Measurements,
    private readonly o: DeviceModelOptions,
  ) {}

  async enroll(id: string, group: string): Promise<SimDevice> {
    const req = signEnrollment(this.key, { deviceId: id, enrollmentSecret: ENROLLMENT_SECRET, group });
    const r = await this.client.device<{ token: string }>('/v1/devices/enroll', req, '', false);
    return {
      id,
      token: r!.token,
      version: BASE,
      committed: BASE,
      state: 'committed',
      trial: false,
      prepared: null,
      lastError: null,
      acked: null,
      ackCount: 0,
      checkinInFlight: false,
      dead: false,
      attempts: new Map(),
    };
  }

  /** A device's life until the simulation stops: check in, upgrade when given a target. */
  async run(d: SimDevice): Promise<void> {
    let due = await this.naps.napUntil(Math.random() * this.o.interval * 1000);
    while (!this.naps.stopping && !d.dead) {
      const res = await this.checkin(d, {}, due);
      if (!res) break;
      let wait = res.nextCheckinSeconds;
      if (res.target && d.state !== 'preparing') wait = await this.upgrade(d, res.target.version);
      else if (d.state === 'rolled-back' || d.state === 'failed') d.state = 'idle';
      if (d.dead) break;
      due = await this.naps.napUntil(wait * 1000);
    }
  }

  private modeFor(d: SimDevice, target: string): Mode {
    const attempt = d.attempts.get(target) ?? 0;
    d.attempts.set(target, attempt + 1);
    if (attempt > 0) return 'ok';
    const r = Math.random();
    const { failRatio, rollbackRatio, silentRatio } = this.o;
    if (target === BAD) return r < this.o.badRollbackRatio ? 'rollback' : 'ok';
    if (r < failRatio) return 'fail';
    if (r < failRatio + rollbackRatio) return 'rollback';
    if (r < failRatio + rollbackRatio + silentRatio) return 'silent';
    return 'ok';
  }

  private report(d: SimDevice, extra: Partial<CheckinRequest>): CheckinRequest {
    return {
      version: d.version,
      state: d.state,
      trial: d.trial,
      committedVersion: d.committed,
      preparedVersion: d.prepared ?? undefined,
      freeBytes: 8 * 1024 ** 3,
      lastError: d.lastError,
      ...extra,
    };
  }

  private async checkin(d: SimDevice, extra: Partial<CheckinRequest> = {}, due?: number): Promise<CheckinResponse | null> {
    const body = this.report(d, extra);
    d.checkinInFlight = true;
    const res = await this.client.device<CheckinResponse>(`/v1/devices/${d.id}/checkin`, body, d.token, true, due).finally(() => (d.checkinInFlight = false));
    if (res) {
      this.m.checkins++;
      d.acked = { version: body.version, state: body.state, trial: body.trial };
      d.ackCount++;
    }
    return res;
  }

  private async event(d: SimDevice, ev: DeviceEvent): Promise<void> {
    if (await this.client.device(`/v1/devices/${d.id}/events`, ev, d.token, false)) this.m.events++;
  }

  /** An upgrade as an agent does it: prepare, ask for a lease, apply, reboot, confirm. Returns the seconds until the next check-in. */
  private async upgrade(d: SimDevice, target: string): Promise<number> {
    const { interval, active } = this.o;
    const mode = this.modeFor(d, target);
    d.state = 'preparing';
    // The download: 5-30 % of an idle interval (minutes against an hour in a real fleet).
    const downloaded = await this.naps.napUntil(interval * 1000 * (0.05 + 0.25 * Math.random()));
    if (this.naps.stopping) return interval;
    if (mode === 'fail') {
      this.injected.failed++;
      d.state = 'failed';
      d.lastError = { code: 'IMAGE_HASH_MISMATCH', message: `simulated: ${target} failed verification` };
      await this.event(d, { type: 'prepare-failed', fromVersion: d.version, toVersion: target, error: d.lastError });
      return interval; // try again at the next regular check-in
    }
    d.state = 'prepared';
    d.prepared = target;
    let res = await this.checkin(d, { wantRebootLease: true }, downloaded);
    while (res && !res.rebootLease.granted && !this.naps.stopping) {
      const due = await this.naps.napUntil(res.nextCheckinSeconds * 1000);
      if (this.naps.stopping) return interval;
      res = await this.checkin(d, { wantRebootLease: true }, due);
    }
    if (!res || this.naps.stopping) return interval;
    if (res.target?.version !== target) {
      d.state = 'idle'; // the rollout paused meanwhile: do not apply
      d.prepared = null;
      return res.nextCheckinSeconds;
    }
    await this.event(d, { type: 'apply-started', fromVersion: d.version, toVersion: target });
    d.state = 'applying';
    if (mode === 'silent') {
      this.injected.silent++;
      d.dead = true; // rebooted and never came back
      return 0;
    }
    const rebooted = await this.naps.napUntil(1000 * (0.5 + Math.random()) * active); // the reboot
    const from = d.version;
    if (mode === 'rollback') {
      if (target === BAD) this.injected.badRolledBack++;
      else this.injected.rolledBack++;
      d.state = 'rolled-back';
      d.prepared = null;
      d.lastError = { code: 'HEALTH_CHECK_FAILED', message: `simulated: health check failed on ${target}` };
      await this.event(d, { type: 'rolled-back', fromVersion: from, toVersion: target, error: d.lastError });
      const r = await this.checkin(d, {}, rebooted);
      return r ? r.nextCheckinSeconds : interval;
    }
    d.version = target;
    d.trial = true;
    d.state = 'trial';
    d.prepared = null;
    await this.checkin(d, {}, rebooted);
    await this.event(d, { type: 'upgrade-succeeded', fromVersion: from, toVersion: target });
    d.trial = false;
    d.committed = target;
    d.state = 'committed';
    d.lastError = null;
    const r = await this.checkin(d);
    return r ? r.nextCheckinSeconds : interval;
  }
}
