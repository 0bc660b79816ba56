import type { Command } from 'commander';

// `ibu delta ...` commands; filled in by the work that owns src/cli/commands/delta.ts.
export function registerDeltaCommands(_program: Command): void {}
