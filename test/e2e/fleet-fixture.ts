/**
 * The preamble the fleet e2e suites share (agent-upgrade, agent-failures, agent-switch, adopt):
 * one work dir, the releases built into it, `ibu serve` over them. No top-level side effects:
 * the hooks are declared when a suite calls useFleetServer().
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { boot, buildFleetReleases, FleetServer, guestNetArgs, missingInOrder, timeline, type FleetBuild } from './harness.js';
import { makeWorkDir, removeWorkDir } from './work-dir.js';

type BootOptions = Parameters<typeof boot>[0];

/** What a fleet suite works with; the fields are set once its before() ran. */
export interface FleetFixture {
  /** The suite's work dir under the system temp dir: logs, disks, the build. */
  work: string;
  /** The releases 1.0 and 2.0, published into a store (buildFleetReleases). */
  build: FleetBuild;
  /** `ibu serve` over build.store, its log in work/server.log. */
  server: FleetServer;
  /** Stops another server the suite started, in after() before the work dir goes. */
  alsoStop(s: FleetServer): void;
  /**
   * Boots a device's disk once (QEMU, 1 GiB, the server at 10.0.2.100, `over` for other boot
   * options), its serial log in work/NAME.log, and asserts that it finished and that its log
   * holds `patterns` in order.
   */
  runDevice(name: string, disk: string, patterns: RegExp[], over?: Partial<BootOptions>): Promise<string>;
}

/**
 * Declares the suite's before() (work dir, buildFleetReleases, the server) and after() (the
 * servers stop; the work dir is removed unless IBU_E2E_KEEP=1, then its path is printed). Call it
 * inside describe() before the suite's own hooks: node:test runs hooks in the order declared, so
 * the suite's before() finds the fixture ready.
 */
export function useFleetServer(prefix: string): FleetFixture {
  const others: FleetServer[] = [];
  const fx = {
    work: '',
    alsoStop(s: FleetServer) {
      others.push(s);
    },
    async runDevice(name: string, disk: string, patterns: RegExp[], over: Partial<BootOptions> = {}): Promise<string> {
      const res = await boot({
        disk,
        logFile: path.join(fx.work, `${name}.log`),
        memMiB: 1024,
        extra: guestNetArgs(fx.server.port),
        timeoutMs: 1_500_000,
        ...over,
      });
      console.log(`${name}: ${timeline(res.log)}`);
      const tail = res.log.split('\n').slice(-80).join('\n');
      assert.equal(res.timedOut || res.stuck !== null, false, `${name}: the device did not finish\n${tail}`);
      const miss = missingInOrder(res.log, patterns);
      assert.equal(miss, null, `${name}: ${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
      return res.log;
    },
  } as FleetFixture;
  before(async () => {
    fx.work = await makeWorkDir(prefix);
    fx.build = await buildFleetReleases(fx.work);
    fx.server = await new FleetServer(fx.build.store, path.join(fx.work, 'server.log')).start();
  });
  after(async () => {
    await fx.server?.stop();
    for (const s of others) await s.stop();
    await removeWorkDir(fx.work);
  });
  return fx;
}
