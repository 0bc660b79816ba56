import type { Command } from 'commander';

// `ibu rollout ...` commands; filled in by the work that owns src/cli/commands/rollout.ts.
export function registerRolloutCommands(_program: Command): void {}
