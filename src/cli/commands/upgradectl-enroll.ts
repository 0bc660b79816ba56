import type { Command } from 'commander';
import { agentFor, withCommonOptions } from './upgradectl-common.js';

export function registerEnrollCommand(program: Command): void {
  withCommonOptions(program.command('enroll'))
    .description('enroll this device with the server and store its token in server.tokenFile')
    .option('--secret <secret>', 'the fleet enrollment secret (not needed for pre-authorized devices); default $IBU_ENROLLMENT_SECRET')
    .option('--group <group>', 'device group (windows and reboot leases are per group)')
    .action(async (o: { secret?: string; group?: string }, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      const r = await agent.enroll({ secret: o.secret ?? process.env.IBU_ENROLLMENT_SECRET, group: o.group });
      if (json) process.stdout.write(JSON.stringify({ ok: true, ...r }) + '\n');
      else process.stdout.write(`enrolled ${r.deviceId}; token stored in ${r.tokenFile}\n`);
    });
}
