import { promises as fsp } from 'node:fs';
import type { Command } from 'commander';
import { applyDelta, describeDelta, makeDelta, readDelta, readDeltaHeader, type ByteTally, type DeltaInfo, type ProgressEvent } from '../../delta/index.js';
import { IbuError, isIbuError } from '../../errors.js';
import { Keyring } from '../../release/keyring.js';
import { parseAndVerifyManifest } from '../../release/manifest.js';
import type { Manifest } from '../../release/types.js';
import { manifestPath } from '../../store/layout.js';
import { formatBytes, mib } from '../../util/bytes.js';

/** `ibu delta info` for a person: where the bytes go, biggest first. */
export function renderDeltaInfo(file: string, i: DeltaInfo): string {
  const pct = (n: number, of: number): string => (of > 0 ? `${((100 * n) / of).toFixed(1)}%` : '-');
  const cols = (name: string, ops: string, target: string, payload: string, share: string): string =>
    `  ${name.padEnd(24)} ${ops.padStart(7)} ${target.padStart(11)} ${payload.padStart(11)} ${share.padStart(6)}\n`;
  const row = (name: string, t: ByteTally): string =>
    cols(name, String(t.ops), formatBytes(t.targetBytes), formatBytes(t.payloadBytes), pct(t.payloadBytes, i.sections.payload));
  const head = cols('', 'ops', 'target', 'payload', 'share');
  const s = i.sections;
  let out =
    `${file}: ${i.fromVersion} → ${i.toVersion}, ${formatBytes(i.bytes)}, ${i.opCount} ops in ${i.segmentCount} segments (${i.generator})\n` +
    `  source ${i.source.size} bytes sha256 ${i.source.sha256}\n  target ${i.target.size} bytes sha256 ${i.target.sha256}\n` +
    `sections: payload ${formatBytes(s.payload)}, op table ${formatBytes(s.opTable)}, ` +
    `header ${formatBytes(s.fixedHeader + s.headerJson)}, trailer ${formatBytes(s.trailer)}\n` +
    `by op kind:\n${head}`;
  for (const k of ['zero', 'copy', 'patch', 'replace', 'recompress'] as const) {
    if (k !== 'recompress' || i.byKind[k].ops > 0) out += row(k.toUpperCase(), i.byKind[k]);
  }
  out += `metadata and file data (PATCH/REPLACE${i.byKind.recompress.ops > 0 ? '/RECOMPRESS' : ''} only):\n${head}`;
  out += row('metadata, directories', i.metadata) + row('file data', i.fileData);
  out += `file data by top-level directory:\n${head}`;
  for (const d of i.byDirectory) out += row(d.directory, d);
  if (i.largestFiles.length > 0) {
    out += `largest files by payload:\n`;
    for (const f of i.largestFiles) {
      const verb = f.type === 'recompress' ? 'recompressed' : 'patched';
      const how = f.type !== 'replace' ? (f.srcPath === f.path ? verb : `${verb} against ${f.srcPath}`) : 'replaced (no source file)';
      out += `  ${formatBytes(f.payloadBytes).padStart(11)}  ${f.path}  ${how}\n`;
    }
  }
  return out;
}

/** A one-line progress display on a TTY (stderr), nothing otherwise. */
function progressLine(enabled: boolean): ((e: ProgressEvent) => void) | undefined {
  if (!enabled) return undefined;
  let last = 0;
  return (e) => {
    const now = Date.now();
    if (now - last < 200 && e.done < e.total) return;
    last = now;
    const pct = e.total > 0 ? Math.floor((100 * e.done) / e.total) : 100;
    process.stderr.write(`\r${e.phase.padEnd(12)} ${String(pct).padStart(3)}%   `);
  };
}

function parseInt10(s: string, what: string): number {
  const n = Number(s);
  if (!Number.isInteger(n)) throw new IbuError('USAGE', `${what} must be an integer (got '${s}').`);
  return n;
}

async function loadManifest(opts: { manifest?: string; keyring?: string; fallbackStore?: string }, toVersion: string): Promise<Manifest | undefined> {
  if (!opts.manifest && !opts.fallbackStore) return undefined;
  if (!opts.keyring) {
    throw new IbuError('USAGE', 'Checking against a manifest (--manifest or --fallback-store) needs --keyring DIR to verify its signature.');
  }
  const keyring = await Keyring.load(opts.keyring);
  let bytes: Uint8Array;
  let what: string;
  if (opts.manifest) {
    bytes = await fsp.readFile(opts.manifest).catch((err: unknown) => {
      throw new IbuError('NOT_FOUND', `Cannot read the manifest ${opts.manifest}: ${(err as Error).message}.`, { cause: err });
    });
    what = `the manifest ${opts.manifest}`;
  } else {
    const { openStore } = await import('../../store/open-store.js');
    const store = openStore(opts.fallbackStore!);
    try {
      bytes = await store.getFile(manifestPath(toVersion));
    } catch (err) {
      if (isIbuError(err, 'NOT_FOUND')) {
        throw new IbuError(
          'RELEASE_NOT_FOUND',
          `Release ${toVersion} has no manifest in ${store.location}; pass --manifest or a store that holds the release.`,
          { cause: err },
        );
      }
      throw err;
    } finally {
      await store.close?.();
    }
    what = `the manifest of ${toVersion} from ${opts.fallbackStore}`;
  }
  return parseAndVerifyManifest(bytes, keyring, what).manifest;
}

// `ibu delta make|apply|info`: file-aware binary deltas between two images (docs/delta-format.md).
export function registerDeltaCommands(program: Command): void {
  const delta = program.command('delta').description('make and apply file-aware binary deltas between two images');

  delta
    .command('make')
    .description('build a delta that turns image A into image B')
    .requiredOption('--from <A.img>', 'source image')
    .requiredOption('--to <B.img>', 'target image')
    .requiredOption('--out <A-B.ibudelta>', 'delta file to write (through OUT.partial, fsync, rename)')
    .option('--level <n>', 'zstd level of the payload (1-22; default 12, or 19 when it has RECOMPRESS ops)')
    .option('--jobs <n>', 'zstd processes at once')
    .option('--recompress', 'send changed xz/gzip files uncompressed; the device compresses them again (needs the same xz/gzip there)')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { from: string; to: string; out: string; level?: string; jobs?: string; recompress?: boolean; json?: boolean }) => {
      const r = await makeDelta({
        fromImage: opts.from,
        toImage: opts.to,
        out: opts.out,
        level: opts.level === undefined ? undefined : parseInt10(opts.level, '--level'),
        jobs: opts.jobs === undefined ? undefined : parseInt10(opts.jobs, '--jobs'),
        recompress: opts.recompress === true,
        onProgress: progressLine(!opts.json && process.stderr.isTTY),
      });
      if (!opts.json && process.stderr.isTTY) process.stderr.write('\n');
      if (opts.json) {
        process.stdout.write(JSON.stringify(r) + '\n');
      } else {
        process.stdout.write(
          `delta ${r.fromVersion} → ${r.toVersion}: ${opts.out} ${mib(r.bytes)} ` +
            `(${r.ops.copy} copy, ${r.ops.patch} patch, ${r.ops.replace} replace, ` +
            `${r.ops.recompress ? `${r.ops.recompress} recompress, ` : ''}${r.ops.zero} zero ops; ` +
            `${r.files.patched} files patched, ${r.files.replaced} replaced) in ${r.seconds.toFixed(1)} s\n`,
        );
      }
    });

  delta
    .command('apply')
    .description('rebuild image B from image A and a delta, bit for bit')
    .requiredOption('--from <A.img>', 'source image (the running image may be used: modified blocks are detected)')
    .requiredOption('--delta <A-B.ibudelta>', 'delta file')
    .requiredOption('--out <B.img>', 'image to write (through OUT.partial, fsync, rename)')
    .option('--manifest <FILE>', 'signed manifest of B: the result must match it (needs --keyring)')
    .option('--keyring <DIR>', 'trusted keys to verify the manifest')
    .option('--fallback-store <DIR|URL>', 'release store to fetch ranges whose source blocks were modified')
    .option('--verify-source', 'hash the whole source image before applying')
    .option('--to-version <V>', 'refuse a delta that does not lead to version V')
    .option('--json', 'print the result as JSON')
    .action(
      async (opts: {
        from: string;
        delta: string;
        out: string;
        manifest?: string;
        keyring?: string;
        fallbackStore?: string;
        verifySource?: boolean;
        toVersion?: string;
        json?: boolean;
      }) => {
        const header = readDeltaHeader(opts.delta);
        const manifest = await loadManifest(opts, opts.toVersion ?? header.toVersion);
        // The store modules (the AWS SDK, undici) are loaded only for a fallback store: ~25 MiB of RSS otherwise.
        const store = opts.fallbackStore ? (await import('../../store/open-store.js')).openStore(opts.fallbackStore) : undefined;
        try {
          const r = await applyDelta({
            sourceImage: opts.from,
            delta: opts.delta,
            out: opts.out,
            manifest,
            fallbackStore: store,
            verifySource: opts.verifySource,
            expectToVersion: opts.toVersion,
            onProgress: progressLine(!opts.json && process.stderr.isTTY),
          });
          if (!opts.json && process.stderr.isTTY) process.stderr.write('\n');
          if (opts.json) {
            process.stdout.write(JSON.stringify(r) + '\n');
          } else {
            const fb = r.fallback.ops > 0 ? `; ${r.fallback.ops} ops from the store (${r.fallback.chunks} chunks, ${mib(r.fallback.downloadedBytes)})` : '';
            process.stdout.write(
              `applied ${r.fromVersion} → ${r.toVersion}: ${r.out} (${mib(r.targetSize)}, sha256 ${r.sha256.slice(0, 16)}…) ` +
                `in ${r.seconds.toFixed(1)} s${fb}\n`,
            );
          }
        } finally {
          await store?.close?.();
        }
      },
    );

  delta
    .command('info')
    .description("show a delta's header and where its bytes go: by op kind, by top-level directory, metadata against file data")
    .argument('<delta>', 'delta file (read whole and checked, like apply does)')
    .option('--json', 'print JSON: the header fields plus the breakdown')
    .action((file: string, opts: { json?: boolean }) => {
      const info = describeDelta(readDelta(file));
      process.stdout.write(opts.json ? JSON.stringify(info) + '\n' : renderDeltaInfo(file, info));
    });
}
