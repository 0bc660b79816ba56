import type { Command } from 'commander';

// `ibu release ...` commands; filled in by the work that owns src/cli/commands/release.ts.
export function registerReleaseCommands(_program: Command): void {}
