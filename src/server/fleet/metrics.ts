import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Fleet } from '../../fleet/fleet.js';

/**
 * Prometheus metrics for /metrics (prom-client). Own registry per server so several servers in
 * one process (tests) do not collide. Gauges that describe the fleet are computed at scrape time.
 */
export class FleetMetrics {
  readonly registry = new Registry();
  private checkins: Counter<'result'>;
  private latency: Histogram;
  private events: Counter<'type'>;

  constructor(service: Fleet) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'ibu_' });
    this.checkins = new Counter({
      name: 'ibu_fleet_checkins_total',
      help: 'Device check-ins by result (ok or the error code).',
      labelNames: ['result'],
      registers,
    });
    this.latency = new Histogram({
      name: 'ibu_fleet_checkin_duration_seconds',
      help: 'Check-in handling time including the group commit.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.events = new Counter({ name: 'ibu_fleet_events_total', help: 'Device events by type.', labelNames: ['type'], registers });
    new Gauge({
      name: 'ibu_fleet_devices',
      help: 'Devices by running version.',
      labelNames: ['version'],
      registers,
      async collect() {
        this.reset();
        for (const v of await service.versionCounts()) this.set({ version: v.version }, v.devices);
      },
    });
    new Gauge({
      name: 'ibu_fleet_rollout_state',
      help: '1 for the current state of each rollout.',
      labelNames: ['rollout', 'channel', 'version', 'state'],
      registers,
      collect() {
        this.reset();
        for (const r of service.listRollouts()) this.set({ rollout: String(r.id), channel: r.channel, version: r.version, state: r.state }, 1);
      },
    });
    new Gauge({
      name: 'ibu_fleet_rollout_wave',
      help: 'Index of the open wave of each rollout.',
      labelNames: ['rollout'],
      registers,
      collect() {
        this.reset();
        for (const r of service.listRollouts()) this.set({ rollout: String(r.id) }, r.wave);
      },
    });
    new Gauge({
      name: 'ibu_fleet_rollout_devices',
      help: 'Devices of running or paused rollouts by participation status.',
      labelNames: ['rollout', 'status'],
      registers,
      async collect() {
        this.reset();
        for (const r of service.listRollouts()) {
          if (r.state !== 'running' && r.state !== 'paused') continue;
          const c = await service.repo.participationCounts(r.id);
          for (const [status, n] of Object.entries(c)) this.set({ rollout: String(r.id), status }, n);
        }
      },
    });
    new Gauge({
      name: 'ibu_fleet_reboot_leases',
      help: 'Reboot leases held, by group.',
      labelNames: ['group'],
      registers,
      async collect() {
        const leases = await service.activeLeases();
        this.reset();
        const by = new Map<string, number>();
        for (const l of leases) by.set(l.group, (by.get(l.group) ?? 0) + 1);
        for (const [group, n] of by) this.set({ group }, n);
      },
    });
  }

  checkin(result: string, t0: bigint): void {
    this.checkins.inc({ result });
    this.latency.observe(Number(process.hrtime.bigint() - t0) / 1e9);
  }

  event(type: string): void {
    this.events.inc({ type });
  }
}
