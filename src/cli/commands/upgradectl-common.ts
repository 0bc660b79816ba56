import type { Command } from 'commander';
import { loadConfig, DEFAULT_CONFIG_PATH } from '../../agent/config.js';
import { openAgent } from '../../agent/open.js';
import type { Agent, CommandResult } from '../../agent/agent.js';
import { EXIT } from '../exit-codes.js';

export interface GlobalOpts {
  config?: string;
  json?: boolean;
}

/** Global options live on the root program; commander hands each action its own command. */
export function globals(cmd: Command): GlobalOpts {
  let c: Command | null = cmd;
  while (c?.parent) c = c.parent;
  return (c?.opts() ?? {}) as GlobalOpts;
}

/** Every subcommand takes --config and --json too, so they work before or after the command name. */
export function withCommonOptions(cmd: Command): Command {
  return cmd.option('--config <file>', 'agent config (default /etc/ibu/agent.json, or $IBU_AGENT_CONFIG)').option('--json', 'print one JSON object on stdout');
}

export async function agentFor(cmd: Command): Promise<{ agent: Agent; json: boolean }> {
  const g = globals(cmd);
  const own = cmd.opts() as GlobalOpts;
  const json = Boolean(g.json || own.json);
  const cfg = await loadConfig(own.config ?? g.config ?? process.env.IBU_AGENT_CONFIG ?? DEFAULT_CONFIG_PATH);
  const agent = await openAgent(cfg, { json, log: (l) => process.stderr.write(`upgradectl: ${l}\n`) });
  return { agent, json };
}

/** Prints a command result (JSON on stdout with --json, a sentence otherwise) and sets the exit status. */
export function printResult(r: CommandResult, json: boolean, exitOnRollback = false): void {
  if (json) process.stdout.write(JSON.stringify({ ok: true, ...r }) + '\n');
  else {
    process.stdout.write(`${r.message}\n`);
    for (const c of r.migration?.changed ?? []) process.stdout.write(`  migrated ${c.path} (${c.strategy}): ${c.action}${c.detail ? ` — ${c.detail}` : ''}\n`);
    for (const h of r.health ?? []) process.stdout.write(`  health ${h.name}: ${h.ok ? 'ok' : 'FAILED'} (${h.detail})\n`);
    if (r.removed?.length) process.stdout.write(`  removed by the disk policy: ${r.removed.join(', ')}\n`);
  }
  if (exitOnRollback && r.outcome === 'rolled-back') process.exitCode = EXIT.HEALTH;
}
