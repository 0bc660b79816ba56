import type { Command } from 'commander';
import { IbuError } from '../../errors.js';

/** The flags of every admin command (`ibu fleet …`, `ibu rollout …`): where the server is, its admin token, JSON output. */
export interface AdminFlags {
  server?: string;
  token?: string;
  json?: boolean;
}

export function addAdminOptions(cmd: Command): Command {
  return cmd
    .option('--server <url>', 'the ibu server (default: IBU_SERVER)')
    .option('--token <token>', 'admin token (default: IBU_ADMIN_TOKEN)')
    .option('--json', 'print JSON');
}

/** A commander parser for a number >= 0 (a count, seconds, a rate); USAGE otherwise. */
export function count(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new IbuError('USAGE', `${name} must be a number >= 0, not '${v}'.`);
    return n;
  };
}
