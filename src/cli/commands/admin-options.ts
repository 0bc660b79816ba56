import type { Command } from 'commander';

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
