import type { Command } from 'commander';
import { diffPublishedReleases, diffReleaseImages } from '../../build/release-changes.js';
import { formatReleaseDiff } from '../../build/release-diff.js';
import { Keyring } from '../../release/keyring.js';
import { parseAndVerifyManifest, parseManifestUnverified, readManifestBytes } from '../../release/manifest.js';
import { openStore } from '../../store/open-store.js';

/** `ibu release diff A B`: packages upgraded, added, removed, and the file-level summary (docs/build.md). */
export function registerReleaseDiff(release: Command): void {
  release
    .command('diff')
    .description('what changed between two releases: packages (upgraded, added, removed) and files')
    .argument('<A>', 'older release: an image file, or a version with --from')
    .argument('<B>', 'newer release: an image file, or a version with --from')
    .option('--from <dirOrUrl>', 'store directory or URL: A and B are versions published there')
    .option('--keyring <dir>', 'with --from: verify both manifests against this keyring')
    .option('--json', 'print JSON')
    .action(async (a: string, b: string, opts: { from?: string; keyring?: string; json?: boolean }) => {
      let diff;
      if (opts.from === undefined) diff = diffReleaseImages(a, b);
      else {
        const store = openStore(opts.from);
        try {
          const keyring = opts.keyring ? await Keyring.load(opts.keyring) : null;
          const load = async (v: string) => {
            const bytes = (await readManifestBytes(store, v)).bytes;
            return keyring ? parseAndVerifyManifest(bytes, keyring, `release ${v}`).manifest : parseManifestUnverified(bytes, `release ${v}`);
          };
          diff = await diffPublishedReleases(store, await load(a), await load(b));
        } finally {
          await store.close?.();
        }
      }
      process.stdout.write(opts.json ? JSON.stringify(diff) + '\n' : formatReleaseDiff(diff).join('\n') + '\n');
    });
}
