import type { Command } from 'commander';

// `ibu image build` (owned by the image-build work).
export function registerImageBuild(_image: Command): void {}
