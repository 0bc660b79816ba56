import type { Command } from 'commander';

// `ibu serve ...` commands; filled in by the work that owns src/cli/commands/serve.ts.
export function registerServeCommands(_program: Command): void {}
