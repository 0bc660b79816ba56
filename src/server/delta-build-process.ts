/**
 * Child process of `ibu serve` that does the CPU-heavy delta work off the server's event loop:
 *
 *   delta-build-process image --data DIR|--store URL --version V --out IMG   reconstruct a release image from the store
 *     (--store s3://bucket/prefix reads S3 with the AWS settings in the environment the server passes)
 *   delta-build-process delta --from-image A --to-image B --out F [--encoders xz-5.4.1~zstd-1.5.7]  makeDelta A -> B
 *     (--encoders: recompress streams of these codecs, which must be the versions installed here)
 *
 * It kills its process group (itself and its zstd children) when its parent goes away (the IPC
 * channel closes), so a killed server leaves no orphan writing into the cache. Exit 0 on success; on failure the error is on stderr.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { parseArgs } from 'node:util';
import { IbuError } from '../errors.js';
import { parseManifestUnverified } from '../release/manifest.js';
import { openStore } from '../store/open-store.js';
import { manifestPath } from '../store/layout.js';
import { VerifyingStore } from '../store/verifying-store.js';
import { commitFile } from '../util/atomic.js';
import { makeDelta } from '../delta/index.js';
import type { Codec } from '../delta/compressed-stream.js';
import { codecsOf, commonEncoders, formatEncoders, parseEncoders } from '../delta/encoder-set.js';
import { localEncoders } from '../delta/recompressor.js';

// The server spawns this child as the leader of its own process group (delta-builder.ts), so
// killing the group also stops the zstd processes makeDelta runs; do the same when the server
// dies (the IPC channel closes), or they would keep writing for seconds after a kill -9.
if (process.send) {
  process.on('disconnect', () => {
    try {
      process.kill(-process.pid, 'SIGKILL');
    } catch {
      process.exit(1);
    }
  });
}

/**
 * Writes the release image to `out` (sparse: zero runs are holes) from the store's chunks, each
 * verified against its id, and checks the whole image against the manifest's sha256 before
 * renaming it into place. The manifest's signature is not checked here: it is the server's own
 * store, and devices verify the signed manifest themselves.
 */
async function reconstructImage(dataDir: string, version: string, out: string): Promise<void> {
  const local = openStore(dataDir);
  const manifest = parseManifestUnverified(await local.getFile(manifestPath(version)), `the manifest of ${version}`);
  const store = new VerifyingStore(local, manifest.chunking.hash);
  const partial = `${out}.${randomBytes(4).toString('hex')}.partial`;
  const fh = await fsp.open(partial, 'w');
  const hash = createHash('sha256');
  try {
    await fh.truncate(manifest.image.size);
    let zeros: Buffer | undefined;
    for (const c of manifest.chunks) {
      if (c.zero) {
        zeros ??= Buffer.alloc(Math.max(c.size, 1 << 20));
        for (let left = c.size; left > 0; left -= Math.min(left, zeros.length)) hash.update(zeros.subarray(0, Math.min(left, zeros.length)));
        continue;
      }
      const { data } = await store.getChunkData(c.id, c.size);
      hash.update(data);
      await fh.write(data, 0, data.length, c.offset);
    }
    const got = hash.digest('hex');
    if (got !== manifest.image.sha256) {
      throw new IbuError(
        'IMAGE_HASH_MISMATCH',
        `the image of ${version} rebuilt from ${dataDir} hashes to ${got}, not ${manifest.image.sha256} as its manifest says; ` +
          `the store is damaged — re-publish ${version}`,
      );
    }
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await fsp.rm(partial, { force: true });
    throw err;
  }
  await fh.close();
  await commitFile(partial, out);
}

/**
 * The codecs a recompressing job may use: those the job names, each of which must be installed
 * here in the version named (the device re-encodes with that version; a builder with another
 * would make a delta the device refuses).
 */
function recompressCodecs(text: string): { recompress: true; recompressCodecs: Codec[] } {
  const wanted = parseEncoders(text);
  const codecs = codecsOf(wanted);
  const local = localEncoders();
  // Every encoder the job names must be here in its version: a common set smaller than the job's is a mismatch.
  if (codecsOf(commonEncoders(wanted, local)).length !== codecs.length)
    throw new IbuError(
      'TOOL_MISSING',
      `This builder's encoders (${formatEncoders(local) || 'none'}) differ from the job's (${text}); ` +
        'builders must have the encoder versions of the api replicas (docs/deployment.md).',
    );
  return { recompress: true, recompressCodecs: codecs };
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  const { values } = parseArgs({
    args: rest,
    options: {
      data: { type: 'string' },
      store: { type: 'string' },
      version: { type: 'string' },
      out: { type: 'string' },
      'from-image': { type: 'string' },
      'to-image': { type: 'string' },
      encoders: { type: 'string' },
    },
  });
  const from = values.store ?? values.data;
  if (cmd === 'image' && from && values.version && values.out) {
    await reconstructImage(from, values.version, values.out);
  } else if (cmd === 'delta' && values['from-image'] && values['to-image'] && values.out) {
    const rc = values.encoders === undefined ? undefined : recompressCodecs(values.encoders);
    const stats = await makeDelta({ fromImage: values['from-image'], toImage: values['to-image'], out: values.out, ...rc });
    process.stdout.write(JSON.stringify(stats) + '\n');
  } else {
    throw new IbuError('USAGE', 'usage: delta-build-process image --data DIR --version V --out IMG | delta --from-image A --to-image B --out F');
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    const e = err as { code?: string; message?: string };
    process.stderr.write(`error[${e.code ?? 'INTERNAL'}]: ${e.message ?? String(err)}\n`);
    process.exit(1);
  },
);
