/**
 * The real appliance's upgrade, measured (issue #17 item 5): release 1.0 -> 2.0 of examples/appliance
 * (Debian 13, systemd, a new kernel ABI, acme-agent 1.0 -> 1.1) by the device's own timers against
 * `ibu serve` on loopback, QEMU TCG (-smp 1, OVMF). Each run is a fresh device from 1.0; all runs
 * share one server, so the first run's prepare includes the server building the delta on demand
 * and later runs download the built one (reported apart). From each run's serial log
 * (upgradeTimings in test/e2e/appliance.ts, kernel timestamps):
 *   - boot of 1.0 to multi-user.target (the anchor: a cold boot of the same device, same run),
 *   - prepare, the wait for the apply timer, the downtime (acme-agent stopped on 1.0 -> acme-agent
 *     1.1 running on 2.0), trial up -> committed, the whole upgrade (prepare start -> committed).
 *
 *   npm run bench:appliance [-- --runs 3] [--json FILE]
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FleetServer, ibu } from '../test/e2e/harness.js';
import { applianceReleases, deviceFiles, publishAppliance, makeApplianceDisk, upgradeTimings } from '../test/e2e/appliance.js';
import { RunningDevice, sshIdentity } from '../test/e2e/appliance-device.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}
const RUNS = Number(arg('runs', '3'));
const JSON_OUT = arg('json', '');

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main(): Promise<void> {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-bench-appliance-'));
  const app = await applianceReleases();
  const keys = path.join(work, 'keys');
  const store = path.join(work, 'store');
  await ibu('keys', 'generate', '--out', keys);
  for (const v of ['1.0', '2.0'] as const) await publishAppliance(app, v, store, keys);
  const server = await new FleetServer(store, path.join(work, 'server.log')).start();
  const id = await sshIdentity(work);
  const runs: Record<string, number | null>[] = [];
  const load0 = os.loadavg();
  try {
    for (let i = 0; i < RUNS; i++) {
      const name = `bench-${i + 1}`;
      const token = await server.enroll(name);
      const { disk } = await makeApplianceDisk(app, { work, name, files: await deviceFiles({ name, token, keysDir: keys, sshPub: id.pub, hold: false }) });
      const dev = await RunningDevice.start({ disk, logFile: path.join(work, `${name}.log`), serverPort: server.port, id });
      try {
        await dev.waitFor(/passed its health checks and is now the committed default/, { timeoutMs: 1_800_000 });
      } finally {
        const res = await dev.powerOff();
        const t = upgradeTimings(res.log, '1.0', '2.0', '1.1');
        runs.push(t);
        process.stderr.write(`run ${i + 1}${i === 0 ? ' (delta built on demand)' : ''}: ${JSON.stringify(t)} load ${os.loadavg()[0]!.toFixed(1)}\n`);
      }
      await fsp.rm(disk, { force: true });
    }
  } finally {
    await server.stop();
  }
  const keysOf = Object.keys(runs[0] ?? {});
  const med = (rs: typeof runs) => Object.fromEntries(keysOf.map((k) => [k, median(rs.map((r) => r[k]).filter((x): x is number => x !== null))]));
  const result = {
    pair: '1.0 -> 2.0 (acme-agent 1.0 -> 1.1, linux-image 6.12.117 -> 6.12.118)',
    machine: `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), QEMU TCG -smp 1 -m 1024, OVMF`,
    loadavg: { start: load0.map((x) => x.toFixed(1)), end: os.loadavg().map((x) => x.toFixed(1)) },
    runs,
    medianAll: med(runs),
    medianDeltaCached: med(runs.slice(1)),
  };
  console.log(JSON.stringify(result, null, 2));
  if (JSON_OUT) await fsp.writeFile(JSON_OUT, JSON.stringify(result, null, 2));
  await fsp.rm(work, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
