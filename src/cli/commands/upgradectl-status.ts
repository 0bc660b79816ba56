import type { Command } from 'commander';
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
      const images = (s.images as Array<{ version: string; sizeBytes: number; allocatedBytes: number }>)
        .map((i) => `${i.version} (${(i.allocatedBytes / 1048576).toFixed(1)} MiB on disk)`)
        .join(', ');
      const le = s.lastError as { code: string; message: string } | null;
      const lines = [
        `running:    ${s.running ?? 'unknown'}${s.trial ? ' (TRIAL, not committed)' : ''}`,
        `committed:  ${s.committed ?? 'unknown'}`,
        `try once:   ${s.tryImage ?? '-'}`,
        `prepared:   ${s.prepared ?? '-'}`,
        `state:      ${String(s.state)}${s.step ? ` (last step ${String(s.step)})` : ''}`,
        `images:     ${images || '-'}`,
        `free:       ${s.freeBytes === null ? '?' : `${((s.freeBytes as number) / 1048576).toFixed(1)} MiB`}`,
        `boot env:   ${(s.bootloader as { dir: string }).dir} (try cleared by ${(s.bootloader as { tryClearedBy: string }).tryClearedBy})`,
        `last error: ${le ? `[${le.code}] ${le.message}` : '-'}`,
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });
}
