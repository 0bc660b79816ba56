import type { Command } from 'commander';
import { mib } from '../../util/bytes.js';
import { agentFor, withCommonOptions } from './upgradectl-common.js';

export function registerStatusCommand(program: Command): void {
  withCommonOptions(program.command('status'))
    .description('running version, committed default, trial or not, installed images, prepared version, journal state, last error')
    .action(async (_o, cmd: Command) => {
      const { agent, json } = await agentFor(cmd);
      const s = await agent.status();
      if (json) {
        process.stdout.write(JSON.stringify(s) + '\n');
        return;
      }
      const images = s.images.map((i) => `${i.version} (${mib(i.allocatedBytes)} on disk)`).join(', ');
      const le = s.lastError;
      const lines = [
        `running:    ${s.running ?? 'unknown'}${s.trial ? ' (TRIAL, not committed)' : ''}`,
        `committed:  ${s.committed ?? 'unknown'}`,
        `try once:   ${s.tryImage ?? '-'}`,
        `prepared:   ${s.prepared ?? '-'}`,
        `state:      ${s.state}${s.step ? ` (last step ${s.step})` : ''}`,
        `images:     ${images || '-'}`,
        `free:       ${s.freeBytes === null ? '?' : mib(s.freeBytes)}`,
        `boot env:   ${s.bootloader.dir} (try cleared by ${s.bootloader.tryClearedBy})`,
        `last error: ${le ? `[${le.code}] ${le.message}` : '-'}`,
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });
}
