import type { Command } from 'commander';

// `ibu fleet ...` commands; filled in by the work that owns src/cli/commands/fleet.ts.
export function registerFleetCommands(_program: Command): void {}
