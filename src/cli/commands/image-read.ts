import type { Command } from 'commander';

// `ibu image ls|cat|diff` (owned by the ext4 reader work).
export function registerImageRead(_image: Command): void {}
