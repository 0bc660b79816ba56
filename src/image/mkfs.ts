import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';
import type { ProductIdentity } from './product-identity.js';

export const BLOCK_SIZE = 4096;
/** Bytes of image per inode (mke2fs -i). */
export const INODE_RATIO = 16384;

/**
 * Our own mke2fs.conf, so the host's /etc/mke2fs.conf (which differs between distributions and
 * releases) cannot change the image. The features are Debian 12's ext4 defaults, which GRUB
 * 2.06 and Linux 4.x+ read; no size-dependent fs_types, so small test images get 4 KiB blocks too.
 */
const MKE2FS_CONF = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = ${BLOCK_SIZE}
	inode_size = 256
	inode_ratio = ${INODE_RATIO}
	reserved_ratio = 0

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`;

export interface MkfsOptions {
  /** The file to format; created or truncated to `size`. */
  file: string;
  size: number;
  identity: ProductIdentity;
  /** Seconds since the epoch for every time mke2fs writes (superblock, root, lost+found). */
  epoch: number;
  /** Populate from this tree (`mke2fs -d`). */
  tree?: string;
  /** Directory for the private mke2fs.conf. */
  workDir: string;
}

/** What an empty filesystem of a size offers: the true capacity after all ext4 metadata. */
export interface Capacity {
  freeBlocks: number;
  freeInodes: number;
}

export async function mkfs(o: MkfsOptions): Promise<void> {
  const conf = path.join(o.workDir, 'mke2fs.conf');
  await fsp.writeFile(conf, MKE2FS_CONF);
  // A fresh sparse file: mke2fs "discards" it (punches holes), so untouched blocks stay holes.
  await fsp.rm(o.file, { force: true });
  const fh = await fsp.open(o.file, 'wx');
  try {
    await fh.truncate(o.size);
  } finally {
    await fh.close();
  }
  const args = [
    '-q',
    '-F',
    '-t',
    'ext4',
    '-T',
    'ext4',
    '-b',
    String(BLOCK_SIZE),
    '-U',
    o.identity.uuid,
    '-E',
    `hash_seed=${o.identity.hashSeed},root_owner=0:0,lazy_itable_init=0`,
  ];
  if (o.tree) args.push('-d', o.tree);
  args.push(o.file, String(Math.floor(o.size / BLOCK_SIZE)));
  // LC_ALL=C: mke2fs -d reads directories with scandir+alphasort, which follows the locale.
  const env = { ...process.env, MKE2FS_CONFIG: conf, E2FSPROGS_FAKE_TIME: String(o.epoch), LC_ALL: 'C' };
  const res = await run('mke2fs', args, { env, allowFailure: true });
  if (res.code !== 0) {
    const msg = res.stderr.trim();
    if (/Could not allocate (block|inode)|No space left|ENOSPC|Could not allocate/i.test(msg)) {
      throw new IbuError('IMAGE_TOO_SMALL', `the tree does not fit into ${o.size} bytes (mke2fs: ${lastLine(msg)}): pass a larger --size.`, {
        details: { stderr: msg },
      });
    }
    throw new IbuError('TOOL_FAILED', `mke2fs failed (exit ${res.code}): ${msg.slice(-2000)}`, { details: { stderr: msg } });
  }
}

/** Formats an empty filesystem of the given size and reads how much room it has. */
export async function capacity(o: Omit<MkfsOptions, 'tree'>): Promise<Capacity> {
  await mkfs(o);
  const h = await superblockFields(o.file);
  return { freeBlocks: Number(h['Free blocks']), freeInodes: Number(h['Free inodes']) };
}

/** `dumpe2fs -h` as a map of field name to value. */
export async function superblockFields(file: string): Promise<Record<string, string>> {
  const res = await run('dumpe2fs', ['-h', file], { env: { ...process.env, LC_ALL: 'C' } });
  const out: Record<string, string> = {};
  for (const line of res.stdout.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

function lastLine(s: string): string {
  const lines = s
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines[lines.length - 1] ?? s;
}
