import type { Command } from 'commander';
import { DEFAULT_CHUNK_PARAMS } from '../../chunk/index.js';
import { CHUNK_HASHES, type ChunkHashName } from '../../chunk/hash.js';
import { IbuError } from '../../errors.js';
import { fetchRelease, type FetchProgress } from '../../release/fetch.js';
import { Keyring } from '../../release/keyring.js';
import { loadSigningKey } from '../../release/keys.js';
import { parseAndVerifyManifest, parseManifestUnverified, readManifestBytes, signManifest, writeManifest } from '../../release/manifest.js';
import { publishRelease } from '../../release/publish.js';
import { readChannel } from '../../release/channel.js';
import { manifestPath } from '../../store/layout.js';
import { LocalStore } from '../../store/local-store.js';
import { openWriteStore } from '../../store/open-store.js';
import { isS3Url, S3Store } from '../../store/s3-store.js';
import { addS3Options, s3OptionsFromFlags, type S3Flags } from './s3-options.js';
import { HttpStore, type HttpLayout } from '../../store/http-store.js';
import type { Store } from '../../store/store.js';
import { formatBytes } from '../../util/bytes.js';
import { fetchFrame, ProgressBar } from '../../util/progress-bar.js';
import { parseSize } from '../run.js';
import { registerReleaseDiff } from './release-diff.js';

const collect = (v: string, acc: string[]) => [...acc, v];

/** `ibu release publish|fetch|sign|verify|list` (docs/releases.md). */
export function registerReleaseCommands(program: Command): void {
  const release = program.command('release').description('publish, sign and fetch releases (chunk store + signed manifest)');

  addS3Options(release.command('publish'))
    .description('chunk, compress and store an image, and write its signed manifest')
    .requiredOption('--image <img>', 'the ext4 image to publish')
    .requiredOption('--version <v>', "release version (must be newer than the channel's latest)")
    .requiredOption('--store <dirOrS3>', 'store directory (created if missing) or s3://bucket/prefix')
    .option('--key <file>', 'signing key (signing.key); repeat to sign with several keys', collect, [])
    .option('--channel <name>', 'channel', 'stable')
    .option('--product <name>', 'product name recorded in the manifest')
    .option(
      '--chunk-size <min:avg:max>',
      `FastCDC sizes (default ${DEFAULT_CHUNK_PARAMS.min / 1024}K:${DEFAULT_CHUNK_PARAMS.avg / 1024}K:${DEFAULT_CHUNK_PARAMS.max / 1024}K)`,
    )
    .option('--hash <name>', `chunk id hash (${CHUNK_HASHES.join(', ')})`, 'blake3')
    .option('--level <n>', 'zstd level', '3')
    .option('--no-kernel', 'allow an image without /vmlinuz and /initrd.img')
    .option('--verity', 'append the dm-verity hash tree to the image file (in place) and sign its root hash (veritysetup; docs/boot.md)')
    .option('--threads <n>', 'zstd worker threads (default: cores - 1; 0 = compress in the main thread)')
    .option('--durability <mode>', "'batch' (default: one filesystem sync before the manifest, crash repair by marker) or 'fsync' (each chunk)", 'batch')
    .option('--json', 'print the result as JSON')
    .action(
      async (
        opts: {
          image: string;
          version: string;
          store: string;
          key: string[];
          channel: string;
          product?: string;
          chunkSize?: string;
          hash: string;
          level: string;
          kernel: boolean;
          verity?: boolean;
          threads?: string;
          durability: string;
          json?: boolean;
        } & S3Flags,
      ) => {
        if (!(CHUNK_HASHES as readonly string[]).includes(opts.hash)) throw new IbuError('USAGE', `--hash must be one of ${CHUNK_HASHES.join(', ')}`);
        if (!/^\d{1,2}$/.test(opts.level) || +opts.level < 1 || +opts.level > 19) throw new IbuError('USAGE', '--level must be a zstd level from 1 to 19');
        if (opts.threads !== undefined && !/^\d{1,2}$/.test(opts.threads)) throw new IbuError('USAGE', '--threads must be a number from 0 to 99');
        if (opts.durability !== 'fsync' && opts.durability !== 'batch') throw new IbuError('USAGE', "--durability must be 'fsync' or 'batch'");
        const tty = !opts.json && process.stderr.isTTY;
        const store = openWriteStore(opts.store, { local: { durability: opts.durability }, s3: s3OptionsFromFlags(opts) });
        const r = await publishRelease({
          image: opts.image,
          version: opts.version,
          store,
          keyFiles: opts.key,
          channel: opts.channel,
          product: opts.product,
          params: opts.chunkSize ? parseChunkSizes(opts.chunkSize) : undefined,
          hash: opts.hash as ChunkHashName,
          level: parseInt(opts.level, 10),
          requireKernel: opts.kernel,
          verity: opts.verity === true,
          threads: opts.threads !== undefined ? parseInt(opts.threads, 10) : undefined,
          onProgress: tty ? (p) => process.stderr.write(`\rpublishing ${pct(p.bytesDone, p.bytesTotal)}`) : undefined,
        }).finally(() => (store instanceof S3Store ? store.close() : undefined));
        if (tty) process.stderr.write('\n');
        if (opts.json) process.stdout.write(JSON.stringify(r) + '\n');
        else {
          process.stdout.write(
            `published ${r.version} on '${r.channel}': ${formatBytes(r.imageSize)} image, ` +
              `${r.chunks} chunks (${r.zeroChunks} zero runs, ${formatBytes(r.zeroBytes)}), ` +
              `${r.newChunks} new chunks stored (${formatBytes(r.newStoredBytes)}) in ${r.seconds.toFixed(1)} s ` +
              `(${(r.imageSize / 1048576 / r.seconds).toFixed(0)} MiB/s)` +
              (r.verity ? `; dm-verity tree ${formatBytes(r.verity.treeBytes)} appended, root hash ${r.verity.rootHash}` : '') +
              '\n',
          );
        }
      },
    );

  addS3Options(release.command('fetch'))
    .description('download a release, reusing chunks from seed images; verifies everything; resumable')
    .requiredOption('--from <dirOrUrl>', 'store directory, s3://bucket/prefix, or base URL (http(s)://host/path, or .../v1 for `ibu serve`)')
    .requiredOption('--version <v>', 'release version')
    .requiredOption('--keyring <dir>', 'keyring directory (trusted *.pub + revoked list)')
    .requiredOption('--out <img>', 'output image (written via OUT.partial, then renamed)')
    .option('--seed <img>', 'an image whose chunks can be reused (repeatable)', collect, [])
    .option('--channel <name>', 'refuse a release from another channel')
    .option('--concurrency <n>', 'parallel chunk downloads (default 8; an s3:// store: IBU_S3_IN_FLIGHT, else 32)')
    .option('--layout <layout>', "HTTP store layout: 'static' (files) or 'api' (ibu serve /v1 routes)")
    .option('--seed-scan <mode>', "'full' (same-offset pass, then content-defined scan) or 'offset'", 'full')
    .option('--json', 'print a final JSON object')
    .action(
      async (
        opts: {
          from: string;
          version: string;
          keyring: string;
          out: string;
          seed: string[];
          channel?: string;
          concurrency?: string;
          layout?: string;
          seedScan: string;
          json?: boolean;
        } & S3Flags,
      ) => {
        if (opts.layout !== undefined && opts.layout !== 'static' && opts.layout !== 'api') throw new IbuError('USAGE', "--layout must be 'static' or 'api'");
        if (opts.seedScan !== 'full' && opts.seedScan !== 'offset') throw new IbuError('USAGE', "--seed-scan must be 'full' or 'offset'");
        const concurrency = opts.concurrency === undefined ? undefined : parseInt(opts.concurrency, 10);
        if (concurrency !== undefined && !(concurrency >= 1 && concurrency <= 256)) throw new IbuError('USAGE', '--concurrency must be between 1 and 256');
        const store = openStoreArg(opts.from, concurrency, opts, opts.layout as HttpLayout | undefined);
        const keyring = await Keyring.load(opts.keyring);
        const bar = new ProgressBar(`fetch ${opts.version}`, !opts.json && Boolean(process.stderr.isTTY));
        const onProgress = (p: FetchProgress): void => bar.update(fetchFrame(p, `${p.phase} ${opts.version}`));
        try {
          const r = await fetchRelease({
            store,
            version: opts.version,
            keyring,
            out: opts.out,
            seeds: opts.seed,
            channel: opts.channel,
            concurrency,
            seedScan: opts.seedScan as 'full' | 'offset',
            onProgress,
          });
          bar.end();
          if (opts.json) process.stdout.write(JSON.stringify(r) + '\n');
          else {
            process.stdout.write(
              `fetched ${r.version} → ${r.out}: ${formatBytes(r.totalBytes)} image, ` +
                `reused ${formatBytes(r.reusedBytes)}, downloaded ${formatBytes(r.downloadedBytes)}, ` +
                `zero ${formatBytes(r.zeroBytes)}, in ${r.seconds.toFixed(1)} s; signed by ${r.signedBy}, sha256 ${r.imageSha256}\n`,
            );
          }
        } finally {
          bar.end();
          await closeStore(store);
        }
      },
    );

  addS3Options(release.command('sign'))
    .description('add a signature to a published manifest (key rotation: sign with the new key, then revoke the old)')
    .requiredOption('--store <dirOrS3>', 'store directory or s3://bucket/prefix')
    .requiredOption('--version <v>', 'release version')
    .option('--key <file>', 'signing key; repeatable', collect, [])
    .option('--drop <keyId>', 'remove the signature of this key id; repeatable', collect, [])
    .action(async (opts: { store: string; version: string; key: string[]; drop: string[] } & S3Flags) => {
      if (opts.key.length === 0 && opts.drop.length === 0) throw new IbuError('USAGE', 'give --key to add a signature or --drop to remove one');
      const store = openWriteStore(opts.store, { s3: s3OptionsFromFlags(opts) });
      const rel = manifestPath(opts.version);
      const m = parseManifestUnverified(await store.getFile(rel), rel);
      const keys = await Promise.all(opts.key.map(loadSigningKey));
      const signed = signManifest({ ...m, signatures: m.signatures.filter((s) => !opts.drop.includes(s.keyId)) }, keys);
      if (signed.signatures.length === 0) throw new IbuError('USAGE', 'refusing to leave the manifest without any signature');
      await writeManifest(store, signed).finally(() => closeStore(store));
      process.stdout.write(`${rel}: signed by ${signed.signatures.map((s) => s.keyId).join(', ')}\n`);
    });

  addS3Options(release.command('verify'))
    .description("check a release manifest's signatures against a keyring")
    .requiredOption('--from <dirOrUrl>', 'store directory or URL')
    .requiredOption('--version <v>', 'release version')
    .requiredOption('--keyring <dir>', 'keyring directory')
    .option('--json', 'print JSON')
    .action(async (opts: { from: string; version: string; keyring: string; json?: boolean } & S3Flags) => {
      const store = openStoreArg(opts.from, 2, opts);
      try {
        const { manifest, keyId } = parseAndVerifyManifest(
          (await readManifestBytes(store, opts.version)).bytes,
          await Keyring.load(opts.keyring),
          `release ${opts.version}`,
        );
        const r = { version: manifest.version, channel: manifest.channel, signedBy: keyId, imageSha256: manifest.image.sha256, imageSize: manifest.image.size };
        process.stdout.write(opts.json ? JSON.stringify(r) + '\n' : `release ${r.version} (${r.channel}) is signed by trusted key ${keyId}\n`);
      } finally {
        await closeStore(store);
      }
    });

  addS3Options(release.command('list'))
    .description('list the versions on a channel')
    .requiredOption('--from <dirOrUrl>', 'store directory or URL')
    .option('--channel <name>', 'channel', 'stable')
    .option('--json', 'print JSON')
    .action(async (opts: { from: string; channel: string; json?: boolean } & S3Flags) => {
      const store = openStoreArg(opts.from, 2, opts);
      try {
        const ch = await readChannel(store, opts.channel);
        process.stdout.write(opts.json ? JSON.stringify(ch) + '\n' : ch.versions.map((v) => `${v}\n`).join(''));
      } finally {
        await closeStore(store);
      }
    });
  registerReleaseDiff(release);
}

function openStoreArg(from: string, connections: number | undefined, s3: S3Flags, layout?: HttpLayout): Store {
  if (/^https?:\/\//i.test(from)) return new HttpStore(from, { connections, layout });
  if (isS3Url(from)) return new S3Store(from, s3OptionsFromFlags(s3));
  return new LocalStore(from);
}

async function closeStore(store: Store): Promise<void> {
  if (store instanceof HttpStore || store instanceof S3Store) await store.close();
}

export function parseChunkSizes(s: string): { min: number; avg: number; max: number } {
  const parts = s.split(':');
  if (parts.length !== 3) throw new IbuError('USAGE', `--chunk-size wants MIN:AVG:MAX such as 16K:64K:256K (got '${s}')`);
  const [min, avg, max] = parts.map(parseSize) as [number, number, number];
  return { min, avg, max };
}

function pct(a: number, b: number): string {
  return b > 0 ? `${((100 * a) / b).toFixed(0)}%` : '';
}
