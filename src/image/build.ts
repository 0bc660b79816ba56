import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IbuError, withContext } from '../errors.js';
import { assertVersion } from '../version.js';
import { commitFile } from '../util/atomic.js';
import { isRoot, run } from '../util/exec.js';
import { mib } from '../util/bytes.js';
import { IBU_VERSION } from '../util/package-version.js';
import { sha256File } from '../util/sha256-file.js';
import { Ext4Reader } from './ext4/index.js';
import { IMAGE_INFO_PATH, imageInfoJson, parseImageInfo, type ImageInfo } from './image-info.js';
import { fsckCheck, fsckFix, imageUuid, updateFromPrevious, type LayoutStableStats } from './layout-stable.js';
import { BLOCK_SIZE, INODE_RATIO, capacity, mkfs } from './mkfs.js';
import { pinInodes, pinSuperblock } from './pin-metadata.js';
import { backupSuperblocks, clearLastMounted, syncBackupSuperblocks } from './superblock-patch.js';
import { DEFAULT_PRODUCT, productIdentity } from './product-identity.js';
import { assertTreeDir, extractTar, findKernel, scanTree, type KernelFiles } from './tree-source.js';

/** Every timestamp in an image when SOURCE_DATE_EPOCH is not set: 2020-01-01T00:00:00Z. */
export const DEFAULT_SOURCE_DATE_EPOCH = 1577836800;

/** Smallest image worth building: room for the journal and a handful of files. */
const MIN_SIZE = 16 * 1024 * 1024;

export interface BuildOptions {
  /** The root tree (read only; never modified). Exactly one of root and tar. */
  root?: string;
  /** A root tarball, extracted as root with numeric owners. */
  tar?: string;
  version: string;
  /** Image size in bytes (rounded down to 4 KiB). */
  size: number;
  out: string;
  /** The previous release's image, whose layout unchanged files keep. */
  previous?: string;
  noKernel?: boolean;
  product?: string;
  /** Overrides SOURCE_DATE_EPOCH from the environment. */
  sourceDateEpoch?: number;
  /** Called with each warning (e.g. the fresh-layout fallback without root). */
  onWarning?: (message: string) => void;
}

export interface BuildResult {
  path: string;
  version: string;
  product: string;
  size: number;
  /** Bytes the image occupies on disk (it is sparse: free blocks are holes). */
  allocatedBytes: number;
  sha256: string;
  /** `previous` when unchanged files kept their blocks from --previous, else `fresh`. */
  layout: 'fresh' | 'previous';
  previousVersion: string | null;
  treeDigest: string;
  kernel: KernelFiles | null;
  warnings: string[];
  /** With layout `previous`: what rsync wrote and fstrim freed. */
  layoutStats?: LayoutStableStats;
}

/**
 * Builds an ext4 image from a root tree: reproducible (same tree, version and product → the same
 * bytes) and, with `previous`, layout-stable. Written to OUT.partial, checked with e2fsck -fn,
 * fsynced, then renamed: OUT is never a half-written image.
 */
export async function buildImage(o: BuildOptions): Promise<BuildResult> {
  assertVersion(o.version);
  if ((o.root === undefined) === (o.tar === undefined)) {
    throw new IbuError('USAGE', 'give exactly one source: --root DIR or --tar FILE.');
  }
  const size = Math.floor(o.size / BLOCK_SIZE) * BLOCK_SIZE;
  if (!Number.isFinite(size) || size < MIN_SIZE) {
    throw new IbuError('IMAGE_TOO_SMALL', `an image needs at least ${MIN_SIZE / (1024 * 1024)} MiB: pass a larger --size.`);
  }
  const product = o.product ?? DEFAULT_PRODUCT;
  const identity = productIdentity(product);
  const epoch = o.sourceDateEpoch ?? sourceDateEpochFromEnv();
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    o.onWarning?.(m);
  };
  const asRoot = runningAsRoot();
  if (o.tar !== undefined && !asRoot) {
    throw new IbuError(
      'ROOT_REQUIRED',
      'building from a tarball needs root: only root can extract files with their owners. Run as root, or extract the tarball yourself and pass --root.',
    );
  }

  const timer = phaseTimer();
  const out = path.resolve(o.out);
  const partial = `${out}.partial`;
  await fsp.mkdir(path.dirname(out), { recursive: true });
  const workDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-build-'));
  try {
    let tree: string;
    if (o.root !== undefined) {
      tree = path.resolve(o.root);
      await assertTreeDir(tree);
    } else {
      tree = path.join(workDir, 'tree');
      await extractTar(path.resolve(o.tar!), tree);
    }
    const kernel = o.noKernel ? null : findKernel(tree);
    timer('source');
    const scan = scanTree(tree);
    timer('scan+digest');

    let previousVersion: string | null = null;
    let usePrevious = false;
    if (o.previous !== undefined) {
      const prev = path.resolve(o.previous);
      if (!fs.existsSync(prev)) {
        throw new IbuError(
          'IMAGE_SOURCE_MISSING',
          `the previous image ${prev} does not exist: pass the image of the release before this one, or leave out --previous.`,
        );
      }
      previousVersion = readPreviousVersion(prev);
      if ((await imageUuid(prev)) !== identity.uuid) {
        warn(`the previous image ${prev} belongs to another product (its UUID is not ${identity.uuid}); building a fresh layout.`);
      } else if (!asRoot) {
        warn('--previous needs root (it loop-mounts the image); building a fresh layout instead, so unchanged files may move and deltas will be larger.');
      } else {
        usePrevious = true;
      }
    }

    // The true room of an empty filesystem of this size, so "too small" is exact and early.
    const cap = await capacity({ file: partial, size, identity, epoch, workDir });
    timer('capacity');
    const needBlocks = scan.dataBlocks + 3; // + /etc/ibu, image.json, slack for a grown /etc
    if (needBlocks > cap.freeBlocks || scan.inodes + 2 > cap.freeInodes) {
      const short = Math.max(needBlocks - cap.freeBlocks, 0) * BLOCK_SIZE;
      const inodesShort = Math.max(scan.inodes + 2 - cap.freeInodes, 0);
      const inodeNote = inodesShort > 0 ? ` and ${inodesShort} more inodes than it has (one per 16 KiB of image)` : '';
      // Room for the missing data, or for the missing inodes, whichever asks for more.
      const fits = Math.max(size + short, size + inodesShort * INODE_RATIO);
      throw new IbuError(
        'IMAGE_TOO_SMALL',
        `the tree needs about ${mib(needBlocks * BLOCK_SIZE)} but an image of ${mib(size)} holds ${mib(cap.freeBlocks * BLOCK_SIZE)} after ext4 metadata: ` +
          `it is short by about ${mib(short)}${inodeNote}. Pass a --size of at least ${mib(Math.ceil(fits * 1.05))}.`,
        { details: { needBytes: needBlocks * BLOCK_SIZE, availableBytes: cap.freeBlocks * BLOCK_SIZE, shortBytes: short } },
      );
    }

    const info: ImageInfo = {
      format: 1,
      product,
      version: o.version,
      size,
      previousVersion: usePrevious ? previousVersion : null,
      sourceDateEpoch: epoch,
      treeDigest: scan.digest,
      kernel,
      builder: { name: 'ibu', version: IBU_VERSION },
    };
    const infoJson = imageInfoJson(info);

    let layoutStats: LayoutStableStats | undefined;
    if (usePrevious) {
      layoutStats = await updateFromPrevious({ previous: path.resolve(o.previous!), file: partial, size, tree, infoJson, workDir, timer });
    } else {
      await mkfs({ file: partial, size, identity, epoch, tree, workDir });
      timer('mke2fs -d');
      await writeInfoWithDebugfs(partial, tree, infoJson, workDir);
    }
    await pinInodes(partial, epoch);
    timer('pin inodes');
    // Resetting generations invalidates checksums seeded by them (directory and extent blocks
    // the kernel wrote); e2fsck recomputes them. Fresh images have none, so it is not needed there.
    if (usePrevious) await fsckFix(partial);
    await pinSuperblock(partial, epoch);
    if (usePrevious) {
      await clearLastMounted(partial);
      await syncBackupSuperblocks(partial, BLOCK_SIZE, await backupSuperblocks(partial));
    }
    timer('pin superblock');
    await fsckCheck(partial);
    timer('e2fsck -fn');
    // Blocks of zeros (an empty journal, zeroed tables) become holes: the file is as sparse as
    // its content allows, and the same for every build path.
    await run('fallocate', ['--dig-holes', partial]);
    timer('dig holes');
    const sha256 = await sha256File(partial);
    timer('sha256');
    const allocatedBytes = (await fsp.stat(partial)).blocks * 512;
    await commitFile(partial, out);
    timer('fsync+rename');
    return {
      path: out,
      version: o.version,
      product,
      size,
      allocatedBytes,
      sha256,
      layout: usePrevious ? 'previous' : 'fresh',
      previousVersion: info.previousVersion,
      treeDigest: scan.digest,
      kernel,
      warnings,
      ...(layoutStats ? { layoutStats } : {}),
    };
  } catch (err) {
    await fsp.rm(partial, { force: true });
    if (err instanceof IbuError) throw err;
    throw withContext(err, `building ${out}`, 'IO_ERROR');
  } finally {
    await fsp.rm(workDir, { recursive: true, force: true });
  }
}

/**
 * With IBU_BUILD_TIMINGS=1, prints how long each phase took on stderr (the benchmark uses it to
 * say what dominates). A no-op otherwise.
 */
export type PhaseTimer = (phase: string) => void;
function phaseTimer(): PhaseTimer {
  if (process.env.IBU_BUILD_TIMINGS !== '1') return () => {};
  let last = process.hrtime.bigint();
  return (phase) => {
    const now = process.hrtime.bigint();
    process.stderr.write(`timing: ${phase} ${(Number(now - last) / 1e9).toFixed(3)}s\n`);
    last = now;
  };
}

/** Root, unless IBU_ASSUME_NON_ROOT=1 asks to behave as an ordinary user (tests of the fallback). */
export function runningAsRoot(): boolean {
  return isRoot() && process.env.IBU_ASSUME_NON_ROOT !== '1';
}

function sourceDateEpochFromEnv(): number {
  const v = process.env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === '') return DEFAULT_SOURCE_DATE_EPOCH;
  if (!/^\d{1,11}$/.test(v)) {
    throw new IbuError('USAGE', `SOURCE_DATE_EPOCH must be whole seconds since 1970, not '${v}'.`);
  }
  return Number(v);
}

/** The version recorded in the previous image's image.json, if it has one. */
function readPreviousVersion(file: string): string | null {
  let reader: Ext4Reader | undefined;
  try {
    reader = Ext4Reader.open(file);
    return parseImageInfo(reader.readFile(IMAGE_INFO_PATH).toString('utf8')).version ?? null;
  } catch (err) {
    if (err instanceof IbuError && (err.code === 'IMAGE_INVALID' || err.code === 'IMAGE_NOT_EXT4')) {
      throw new IbuError(err.code, `the previous image ${file} is not a valid ext4 image: ${err.message}`, { cause: err });
    }
    return null;
  } finally {
    reader?.close();
  }
}

/**
 * Adds /etc/ibu/image.json to a freshly made filesystem. mke2fs -d takes one tree, and the
 * user's tree is never written to, so the file goes in afterwards with debugfs.
 */
async function writeInfoWithDebugfs(file: string, tree: string, json: string, workDir: string): Promise<void> {
  const local = path.join(workDir, 'image.json');
  await fsp.writeFile(local, json, { mode: 0o644 });
  const lines: string[] = [];
  for (const dir of ['/etc', '/etc/ibu']) {
    if (!fs.existsSync(path.join(tree, dir))) lines.push(`mkdir ${dir}`, `sif ${dir} mode 040755`, `sif ${dir} uid 0`, `sif ${dir} gid 0`);
  }
  if (fs.existsSync(path.join(tree, IMAGE_INFO_PATH))) lines.push(`rm ${IMAGE_INFO_PATH}`);
  lines.push(`write ${local} ${IMAGE_INFO_PATH}`, `sif ${IMAGE_INFO_PATH} mode 0100644`, `sif ${IMAGE_INFO_PATH} uid 0`, `sif ${IMAGE_INFO_PATH} gid 0`);
  const res = await run('debugfs', ['-w', '-f', '-', file], { input: lines.join('\n') + '\n', env: { ...process.env, LC_ALL: 'C' } });
  const errors = res.stderr.split('\n').filter((l) => l.trim() && !/^debugfs \d/.test(l) && !/^Allocated inode/.test(l));
  if (errors.length > 0) {
    throw new IbuError('TOOL_FAILED', `debugfs could not write ${IMAGE_INFO_PATH} into the image: ${errors.slice(0, 5).join('; ')}`);
  }
}
