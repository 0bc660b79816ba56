import type { Command } from 'commander';
import { buildImage } from '../../image/build.js';
import { mib } from '../../util/bytes.js';
import { parseSize } from '../run.js';

interface BuildFlags {
  root?: string;
  tar?: string;
  version: string;
  size: string;
  previous?: string;
  kernel: boolean;
  product?: string;
  out: string;
  json?: boolean;
}

// `ibu image build`: a root tree or tarball → a reproducible, layout-stable ext4 image.
export function registerImageBuild(image: Command): void {
  image
    .command('build')
    .description('build a reproducible ext4 image from a root tree (--root) or tarball (--tar)')
    .option('--root <dir>', 'root filesystem tree (read only)')
    .option('--tar <file>', 'root filesystem tarball (extracted as root with numeric owners)')
    .requiredOption('--version <v>', 'release version, e.g. 2026.11.2')
    .requiredOption('--size <bytes>', 'image size (bytes or 512M, 2G, ...)')
    .option('--previous <img>', "previous release's image: unchanged files keep their blocks (needs root)")
    .option('--no-kernel', 'do not require /vmlinuz and /initrd.img')
    .option('--product <name>', 'product name (fixes the filesystem UUID and hash seed)')
    .requiredOption('--out <img>', 'output image file (written as OUT.partial, then renamed)')
    .option('--json', 'print the result as JSON')
    .action(async (f: BuildFlags) => {
      const res = await buildImage({
        root: f.root,
        tar: f.tar,
        version: f.version,
        size: parseSize(f.size),
        previous: f.previous,
        noKernel: !f.kernel,
        product: f.product,
        out: f.out,
        onWarning: (m) => process.stderr.write(`warning: ${m}\n`),
      });
      if (f.json) {
        process.stdout.write(
          JSON.stringify({
            path: res.path,
            version: res.version,
            product: res.product,
            size: res.size,
            allocatedBytes: res.allocatedBytes,
            sha256: res.sha256,
            layout: res.layout,
            previousVersion: res.previousVersion,
            treeDigest: res.treeDigest,
            warnings: res.warnings,
          }) + '\n',
        );
        return;
      }
      const lines = [
        `built ${res.path}`,
        `  version ${res.version} (product ${res.product})`,
        `  size ${mib(res.size)}, ${mib(res.allocatedBytes)} allocated (sparse)`,
        `  layout ${res.layout === 'previous' ? `kept from ${res.previousVersion ?? 'the previous image'}` : 'fresh'}`,
        `  sha256 ${res.sha256}`,
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });
}
