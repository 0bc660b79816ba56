import type { Command } from 'commander';
import { IbuError } from '../../errors.js';
import { promises as fsp } from 'node:fs';
import { FleetAdminClient } from '../../fleet/admin-client.js';
import { addAdminOptions, count, type AdminFlags } from './admin-options.js';
import { parseFactorySecrets } from '../../fleet/factory-secrets.js';
import { spawnSync } from 'node:child_process';
import { simulate } from '../../fleet/simulator/simulate.js';
import { hasYoungGenerationSetting, SIMULATOR_SEMI_SPACE_MIB } from '../../fleet/simulator/young-generation.js';
import type { GroupRecord, ReleaseRecord } from '../../fleet/types.js';

function int(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new IbuError('USAGE', `${name} must be an integer >= ${min}, not '${v}'.`);
    return n;
  };
}

/** `ibu fleet ...`: fleet status, releases, groups (admin API) and the fleet simulator. */
export function registerFleetCommands(program: Command): void {
  const fleet = program.command('fleet').description('the fleet: status, releases on the upgrade path, groups, simulator');

  addAdminOptions(fleet.command('status').description('devices by version, rollouts, problem devices')).action(async (o: AdminFlags) => {
    const s = await FleetAdminClient.fromOptions(o).call<{
      enrolled: number;
      versions: Array<{ version: string; devices: number }>;
      rollouts: Array<{ id: number; version: string; state: string; wave: number; reason: string | null }>;
      problems: Array<{
        id: string;
        version: string | null;
        participation?: { status: string; errorCode: string | null; errorMessage: string | null } | null;
        flags: string[];
      }>;
    }>('GET', '/v1/admin/fleet/summary');
    if (o.json) return void process.stdout.write(JSON.stringify(s) + '\n');
    const out = [`${s.enrolled} devices enrolled`, 'versions:'];
    for (const v of s.versions) out.push(`  ${v.version.padEnd(20)} ${v.devices}`);
    out.push('rollouts:');
    for (const r of s.rollouts) out.push(`  ${r.id} ${r.version} ${r.state} wave ${r.wave}${r.reason ? ` (${r.reason})` : ''}`);
    out.push(`problem devices: ${s.problems.length}`);
    for (const p of s.problems.slice(0, 20))
      out.push(
        `  ${p.id} ${p.version ?? '-'} ${p.participation?.status ?? ''} ${p.flags.join(',')} ` +
          `${p.participation?.errorCode ?? ''} ${p.participation?.errorMessage ?? ''}`,
      );
    process.stdout.write(out.join('\n') + '\n');
  });

  addAdminOptions(
    fleet
      .command('release')
      .description("put a release on a channel's upgrade path (or change it), e.g. mark it a mandatory stepping stone")
      .requiredOption('--version <v>', 'release version')
      .option('--channel <name>', 'channel (default stable)')
      .option('--mandatory', 'every device must pass through this release')
      .option('--not-mandatory', 'clear the mandatory mark')
      .option('--manifest-url <url>', 'where devices fetch the manifest (default /v1/releases/<v>/manifest)'),
  ).action(async (o: AdminFlags & { version: string; channel?: string; mandatory?: boolean; notMandatory?: boolean; manifestUrl?: string }) => {
    const mandatory = o.mandatory ? true : o.notMandatory ? false : undefined;
    const r = await FleetAdminClient.fromOptions(o).call<ReleaseRecord>('POST', '/v1/admin/fleet/releases', {
      version: o.version,
      channel: o.channel,
      mandatory,
      manifestUrl: o.manifestUrl,
    });
    process.stdout.write((o.json ? JSON.stringify(r) : `${r.channel} ${r.version}${r.mandatory ? ' (mandatory)' : ''}`) + '\n');
  });

  addAdminOptions(
    fleet
      .command('group')
      .argument('<name>', 'group name')
      .description("set a group's maintenance window and reboot concurrency")
      .option('--window <json>', 'e.g. \'{"timeZone":"Europe/Berlin","rules":[{"days":[1,2,3,4,5],"start":"01:00","end":"04:00"}]}\' or "none"')
      .option('--max-reboots <n>', 'concurrent reboot leases in the group (0 = unlimited)', int('--max-reboots', 0))
      .option('--lease-ttl <seconds>', 'a reboot lease expires after this long', int('--lease-ttl', 1)),
  ).action(async (name: string, o: AdminFlags & { window?: string; maxReboots?: number; leaseTtl?: number }) => {
    let window: unknown;
    if (o.window !== undefined) {
      try {
        window = o.window === 'none' ? null : JSON.parse(o.window);
      } catch {
        throw new IbuError('USAGE', '--window must be JSON like {"timeZone":"Europe/Berlin","rules":[{"days":[6],"start":"22:00","end":"04:00"}]} or "none".');
      }
    }
    const g = await FleetAdminClient.fromOptions(o).call<GroupRecord>('PUT', `/v1/admin/fleet/groups/${encodeURIComponent(name)}`, {
      ...(window !== undefined ? { window } : {}),
      ...(o.maxReboots !== undefined ? { maxConcurrentReboots: o.maxReboots } : {}),
      ...(o.leaseTtl !== undefined ? { leaseTtlSeconds: o.leaseTtl } : {}),
    });
    process.stdout.write(
      (o.json
        ? JSON.stringify(g)
        : `${g.name}: window ${g.window ? JSON.stringify(g.window) : 'any time'}, ` +
          `max reboots ${g.maxConcurrentReboots || 'unlimited'}, lease ${g.leaseTtlSeconds} s`) + '\n',
    );
  });

  addAdminOptions(
    fleet
      .command('factory-secrets')
      .argument('<file>', 'lines of "<device id> <sha256 hex of its secret>"')
      .description('import per-device one-time factory secrets (only their hashes): each id may enroll once with its own secret')
      .option('--group <name>', 'group the devices join (default: the fleet default)')
      .option('--channel <name>', 'channel the devices join (default: the fleet default)'),
  ).action(async (file: string, o: AdminFlags & { group?: string; channel?: string }) => {
    const devices = parseFactorySecrets(await fsp.readFile(file, 'utf8'));
    const client = FleetAdminClient.fromOptions(o);
    let added = 0;
    for (let i = 0; i < devices.length; i += 50_000) {
      const part = devices.slice(i, i + 50_000);
      added += (await client.call<{ added: number }>('POST', '/v1/admin/fleet/devices/factory-secrets', { devices: part, group: o.group, channel: o.channel }))
        .added;
    }
    process.stdout.write((o.json ? JSON.stringify({ added }) : `${added} factory secrets imported`) + '\n');
  });

  addAdminOptions(
    fleet
      .command('reset-identity')
      .argument('<id>', 'device id')
      .description("forget a device's key and revoke its token (replaced disk, stolen device); it enrolls again like a new device"),
  ).action(async (id: string, o: AdminFlags) => {
    const d = await FleetAdminClient.fromOptions(o).call<{ id: string }>('POST', `/v1/admin/fleet/devices/${encodeURIComponent(id)}/reset-identity`);
    process.stdout.write((o.json ? JSON.stringify(d) : `${d.id}: key forgotten, token revoked; it must enroll again`) + '\n');
  });

  fleet
    .command('simulate')
    .description('run N simulated devices against a real server on loopback through a staged rollout with failures and a restart')
    .option('--devices <n>', 'simulated devices', int('--devices', 10), 80_000)
    .option('--rate <n>', 'target idle check-ins per second (sets the compressed check-in interval)', int('--rate', 1), 1000)
    .option(
      '--concurrency <n>',
      'HTTP connections to the server (devices run open-loop; waiting for a connection counts in the latency)',
      int('--concurrency', 1),
      128,
    )
    .option('--database-url <url>', 'run the server on PostgreSQL instead of SQLite')
    .option('--replicas <n>', 'server processes on the one PostgreSQL database (needs --database-url); devices spread over them', int('--replicas', 1), 1)
    .option(
      '--ramp <devices-per-second>',
      "open the rollout's waves at this many devices per second (default: rate / 5; 0: each wave at once)",
      count('--ramp'),
    )
    .option('--no-restart', 'do not restart the server midway')
    .option('--keep', 'keep the temporary data directory')
    .option('--json', 'print the result as one JSON object')
    .action(
      async (o: {
        devices: number;
        rate: number;
        concurrency: number;
        databaseUrl?: string;
        replicas: number;
        ramp?: number;
        restart: boolean;
        keep?: boolean;
        json?: boolean;
      }) => {
        if (!hasYoungGenerationSetting()) {
          // 80,000 devices' state and every request's garbage: with V8's default young generation the
          // simulator scavenged every ~250 ms (15-30 ms each) and its stalls made much of the latency
          // tail it reports (docs/benchmarks.md, "Fleet"). Run again with a larger one.
          const r = spawnSync(process.execPath, [`--max-semi-space-size=${SIMULATOR_SEMI_SPACE_MIB}`, ...process.execArgv, ...process.argv.slice(1)], {
            stdio: 'inherit',
          });
          process.exit(r.status ?? 1);
        }
        const result = await simulate({
          devices: o.devices,
          replicas: o.replicas,
          rate: o.rate,
          rampDevicesPerSecond: o.ramp,
          concurrency: o.concurrency,
          databaseUrl: o.databaseUrl,
          restart: o.restart,
          keep: o.keep,
          log: o.json ? undefined : (m) => process.stderr.write(`fleet simulate: ${m}\n`),
        });
        if (o.json) {
          process.stdout.write(JSON.stringify(result) + '\n');
          return;
        }
        const ok = (b: boolean) => (b ? 'yes' : 'NO');
        process.stdout.write(
          [
            `devices            ${result.devices}`,
            `check-ins          ${result.checkins} in ${result.durationSeconds} s = ${result.checkinsPerSec}/s (events ${result.events})`,
            `latency            p50 ${result.p50Ms} ms, p99 ${result.p99Ms} ms, max ${result.maxMs} ms (p99 with the restart: ${result.p99MsAll} ms)`,
            ...result.phases.map((p) => `  ${p.phase.padEnd(26)} ${p.checkins} check-ins, p50 ${p.p50Ms} ms, p99 ${p.p99Ms} ms, max ${p.maxMs} ms`),
            `sustained          slowest 10 s window ${result.windows.minPerSec}/s, median ${result.windows.medianPerSec}/s`,
            `event-loop delay   p99 simulator ${result.clientLagP99Ms} ms, server ${result.serverLag.p99Ms} ms (max ${result.serverLag.maxMs} ms)`,
            `rollout completed  ${ok(result.rolloutCompleted)} (server restarted midway: ${ok(result.serverRestarted)})`,
            `bad release paused ${ok(result.rolloutPausedCorrectly)}${result.pauseReason ? ` (${result.pauseReason})` : ''}`,
            `lost updates       ${result.lostUpdates}`,
            `injected           ${JSON.stringify(result.injected)}`,
            `cpu                server ${result.cpu.serverSeconds} s, simulator ${result.cpu.clientSeconds} s, wall ${result.cpu.wallSeconds} s`,
          ].join('\n') + '\n',
        );
        if (!result.rolloutCompleted || !result.rolloutPausedCorrectly || result.lostUpdates > 0) process.exitCode = 1;
      },
    );
}
