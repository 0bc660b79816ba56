import { IbuError } from '../../errors.js';
import { fetchRelease } from '../../release/fetch.js';
import { fetchFrame, ProgressBar } from '../../util/progress-bar.js';
import type { Transport } from './transport.js';

/** The release's chunks from the store, seeded from the images already on the disk: the last resort, always there. */
export const chunksTransport: Transport = {
  name: 'chunks',

  available: () => true,

  async fetch({ req: r, deps: d }) {
    if (!d.store) throw new IbuError('CONFIG_INVALID', 'No release source: set server.url or download.store in the agent config.');
    const seeds = [...new Set([r.from?.image, ...r.seeds].filter((x): x is string => !!x))];
    const bar = new ProgressBar(r.manifest.version, d.progress);
    try {
      const res = await fetchRelease({
        store: d.store,
        version: r.manifest.version,
        keyring: await d.keyring(),
        out: r.out,
        seeds,
        ...(r.liveRoot !== undefined ? { liveRoot: r.liveRoot } : {}),
        channel: d.cfg.channel,
        // Small commits: a device loses at most this much download to a power cut.
        commitEveryBytes: 4 * 1024 * 1024,
        onProgress: (p) => bar.update(fetchFrame(p, r.manifest.version)),
      });
      return {
        method: 'chunks',
        downloadedBytes: res.downloadedBytes,
        reusedBytes: res.reusedBytes,
        resumed: res.resumed,
        ...(res.liveSeed ? { liveSeedBytes: res.liveSeed.bytes } : {}),
      };
    } finally {
      bar.end();
    }
  },

  // Nothing comes after chunks: the error is the answer.
  fallback: () => Promise.resolve(null),
};
