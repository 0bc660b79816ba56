import type { Command } from 'commander';

// `ibu keys ...` commands; filled in by the work that owns src/cli/commands/keys.ts.
export function registerKeysCommands(_program: Command): void {}
