import type { Command } from 'commander';
import { registerImageBuild } from './image-build.js';
import { registerImageRead } from './image-read.js';

export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('build and inspect ext4 OS images');
  registerImageBuild(image);
  registerImageRead(image);
}
