import type { Command } from 'commander';
import { adopt, finalizeAdoption } from '../../agent/adopt.js';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../../agent/config.js';
import { IbuError } from '../../errors.js';
import { globals, withCommonOptions, type GlobalOpts } from './upgradectl-common.js';

interface AdoptCliOptions extends GlobalOpts {
  version?: string;
  store?: string;
  host?: string;
  reboot?: boolean;
  finalize?: boolean;
}

/** `upgradectl adopt`: a conventionally installed machine onto images (docs/adopt.md). */
export function registerAdoptCommand(program: Command): void {
  withCommonOptions(program.command('adopt'))
    .description('move this conventionally installed Debian machine onto images: preflight, seeded download, config migration, GRUB trial boot')
    .option('--version <version>', 'the release to adopt')
    .option('--store <dir|url>', 'take the release from this store instead of the configured server')
    .option('--host <dir>', 'the root filesystem seen alone (default: a private bind mount of / under /run/ibu)')
    .option('--no-reboot', 'do not reboot at the end: the trial starts at the next reboot')
    .option('--finalize', 'after the adopted image is committed: GRUB stops falling back to the conventional system')
    .action(async (o: AdoptCliOptions, cmd: Command) => {
      const g = globals(cmd);
      const json = Boolean(g.json || o.json);
      const configFile = o.config ?? g.config ?? process.env.IBU_AGENT_CONFIG ?? DEFAULT_CONFIG_PATH;
      const cfg = await loadConfig(configFile);
      const log = (l: string) => process.stderr.write(`upgradectl: ${l}\n`);
      if (o.finalize) {
        const r = await finalizeAdoption(cfg);
        process.stdout.write(json ? JSON.stringify({ ok: true, ...r }) + '\n' : r.message + '\n');
        return;
      }
      if (!o.version) throw new IbuError('USAGE', 'upgradectl adopt needs --version VERSION (or --finalize).');
      if (o.store) cfg.download.store = o.store;
      const r = await adopt(cfg, { version: o.version, configFile, host: o.host, noReboot: o.reboot === false, log, json });
      if (json) {
        process.stdout.write(JSON.stringify({ ok: true, ...r }) + '\n');
        return;
      }
      process.stdout.write(`${r.message}\n`);
      const d = r.download as { downloadedBytes?: number; reusedBytes?: number; liveSeedBytes?: number } | undefined;
      if (d) {
        const mib = (n = 0) => `${(n / 1048576).toFixed(1)} MiB`;
        process.stdout.write(`  downloaded ${mib(d.downloadedBytes)} from the network; ${mib(d.liveSeedBytes)} of the image read from this system's files\n`);
      }
      for (const c of r.migration) process.stdout.write(`  migrated ${c.path} (${c.strategy}): ${c.action}${c.detail ? ` — ${c.detail}` : ''}\n`);
    });
}
