import { promises as fsp } from 'node:fs';
import type { Command } from 'commander';
import { IbuError } from '../../errors.js';
import { Keyring } from '../../release/keyring.js';
import { parseAndVerifyManifest, parseManifestUnverified } from '../../release/manifest.js';
import type { Manifest } from '../../release/types.js';
import { manifestPath } from '../../store/layout.js';
import { LocalStore } from '../../store/local-store.js';
import { publishZfsRelease } from '../../zfs/publish.js';
import { manifestZfs, receiveRelease, streamRef } from '../../zfs/receive.js';
import { buildCompressedStream, verifyStreamFile } from '../../zfs/stream.js';
import * as path from 'node:path';

const collect = (v: string, acc: string[]): string[] => [...acc, v];

async function verifiedManifest(file: string, keyringDir: string): Promise<Manifest> {
  const bytes = await fsp.readFile(file).catch((err: unknown) => {
    throw new IbuError('NOT_FOUND', `Cannot read the manifest ${file}: ${(err as Error).message}.`, { cause: err });
  });
  return parseAndVerifyManifest(bytes, await Keyring.load(keyringDir), `the manifest ${file}`).manifest;
}

function print(json: boolean | undefined, obj: Record<string, unknown>, line: string): void {
  process.stdout.write(json ? `${JSON.stringify(obj)}\n` : `${line}\n`);
}

/**
 * `ibu zfs publish|stream|verify|receive` (docs/zfs.md). A command of its own rather than a
 * `--zfs` flag on `ibu release publish`: it needs root and the ZFS tools on the release machine,
 * and it brings its own options (dataset, volblocksize, how many streams to sign), while the
 * portable publish stays free of them.
 */
export function registerZfsCommands(program: Command): void {
  const z = program.command('zfs').description('releases as ZFS zvol snapshots and incremental zfs send streams (docs/zfs.md)');

  z.command('publish')
    .description('publish a release (chunks + signed manifest) and keep it as POOL/VOLUME@<version>, signing the zfs send -i streams from earlier releases')
    .requiredOption('--image <img>', 'the ext4 image to publish')
    .requiredOption('--version <v>', 'release version')
    .requiredOption('--store <dir>', 'store directory')
    .requiredOption('--dataset <pool/volume>', 'the zvol holding every release as a snapshot (created sparse if missing)')
    .option('--key <file>', 'signing key; repeatable', collect, [])
    .option('--channel <name>', 'channel', 'stable')
    .option('--streams <n>', 'sign streams from this many previous releases of the channel', '3')
    .option('--volblocksize <bytes>', 'volblocksize when the zvol is created', '8192')
    .option('--no-kernel', 'allow an image without /vmlinuz and /initrd.img')
    .option('--json', 'print the result as JSON')
    .action(
      async (o: {
        image: string;
        version: string;
        store: string;
        dataset: string;
        key: string[];
        channel: string;
        streams: string;
        volblocksize: string;
        kernel: boolean;
        json?: boolean;
      }) => {
        const streams = Number(o.streams);
        const vbs = Number(o.volblocksize);
        if (!Number.isInteger(streams) || streams < 0) throw new IbuError('USAGE', '--streams must be a whole number >= 0.');
        if (!Number.isInteger(vbs) || vbs < 512 || (vbs & (vbs - 1)) !== 0 || vbs > 131072)
          throw new IbuError('USAGE', '--volblocksize must be a power of two from 512 to 131072.');
        const r = await publishZfsRelease({
          image: o.image,
          version: o.version,
          store: new LocalStore(o.store),
          keyFiles: o.key,
          channel: o.channel,
          requireKernel: o.kernel,
          dataset: o.dataset,
          streamsFrom: streams,
          volblocksize: vbs,
        });
        print(
          o.json,
          r as unknown as Record<string, unknown>,
          `published ${r.version} on '${r.channel}' and ${r.zfs.dataset}@${r.version} (guid ${r.zfs.guid}): ` +
            `${r.zfs.write.written} blocks written, ${r.zfs.write.zeroed} zeroed, ${r.zfs.write.unchanged} unchanged; ` +
            `signed streams: ${r.zfs.streams.map((s) => `${s.from} (${s.size} bytes)`).join(', ') || 'none'}`,
        );
      },
    );

  z.command('stream')
    .description("build the compressed stream FROM -> TO from the store's release pool, checked against the signed manifest (what ibu serve does on demand)")
    .requiredOption('--store <dir>', 'store directory (its manifest of --to names the dataset and the signed hash)')
    .requiredOption('--from <v>', 'base version')
    .requiredOption('--to <v>', 'target version')
    .requiredOption('--out <file>', 'output (.zst)')
    .option('--level <n>', 'zstd level', '3')
    .option('--json', 'print the result as JSON')
    .action(async (o: { store: string; from: string; to: string; out: string; level: string; json?: boolean }) => {
      const m = parseManifestUnverified(await fsp.readFile(path.join(o.store, manifestPath(o.to))), `the manifest of ${o.to}`);
      const zf = manifestZfs(m);
      const ref = streamRef(m, o.from);
      if (!zf || !ref) throw new IbuError('NOT_FOUND', `The manifest of ${o.to} signs no ZFS stream from ${o.from}.`);
      const partial = `${o.out}.partial`;
      try {
        const r = await buildCompressedStream({ dataset: zf.dataset, from: o.from, to: o.to, expect: ref, out: partial, level: Number(o.level) });
        await fsp.rename(partial, o.out);
        print(
          o.json,
          { from: o.from, to: o.to, streamBytes: r.size, compressedBytes: r.compressedSize, sha256: ref.sha256 },
          `${o.out}: ${r.compressedSize} bytes (stream ${r.size} bytes, sha256 ${ref.sha256} as signed)`,
        );
      } finally {
        await fsp.rm(partial, { force: true });
      }
    });

  z.command('verify')
    .description('check a downloaded compressed stream against the signed manifest (base GUID, size, sha256)')
    .requiredOption('--stream <file>', 'the .zst stream')
    .requiredOption('--manifest <file>', 'the signed manifest of the target release')
    .requiredOption('--keyring <dir>', 'keyring directory')
    .requiredOption('--from <v>', 'base version')
    .option('--json', 'print the result as JSON')
    .action(async (o: { stream: string; manifest: string; keyring: string; from: string; json?: boolean }) => {
      const m = await verifiedManifest(o.manifest, o.keyring);
      const ref = streamRef(m, o.from);
      if (!ref || !m.zfs) throw new IbuError('ZFS_BASE_MISSING', `The manifest of ${m.version} signs no ZFS stream from ${o.from}.`);
      await verifyStreamFile(o.stream, ref, m.zfs.guid, m.version);
      print(
        o.json,
        { ok: true, from: o.from, to: m.version, size: ref.size, sha256: ref.sha256 },
        `ok: ${o.stream} is the signed stream ${o.from} -> ${m.version}`,
      );
    });

  z.command('receive')
    .description('what the agent does with a stream: verify, zfs recv into DATASET, export the image (sparse), check its hash')
    .requiredOption('--stream <file>', 'the .zst stream')
    .requiredOption('--manifest <file>', 'the signed manifest of the target release')
    .requiredOption('--keyring <dir>', 'keyring directory')
    .requiredOption('--from <v>', 'base version (DATASET@<from> must exist with the signed GUID)')
    .requiredOption('--dataset <pool/volume>', 'local zvol holding the base snapshot')
    .requiredOption('--out <img>', 'image file to write')
    .option('--json', 'print the result as JSON')
    .action(async (o: { stream: string; manifest: string; keyring: string; from: string; dataset: string; out: string; json?: boolean }) => {
      const m = await verifiedManifest(o.manifest, o.keyring);
      const r = await receiveRelease({ file: o.stream, manifest: m, from: o.from, dataset: o.dataset, out: o.out });
      print(
        o.json,
        { version: m.version, ...r },
        `received ${o.dataset}@${m.version} and exported ${o.out} ` +
          `(verify ${r.seconds.verify.toFixed(1)} s, receive ${r.seconds.receive.toFixed(1)} s, export ${r.seconds.export.toFixed(1)} s)`,
      );
    });
}
