import { verifyVerityTree } from '../image/verity.js';
import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import { fsyncDir } from '../util/atomic.js';
import { run } from '../util/exec.js';
import { sha256File } from '../util/sha256-file.js';
import type { AgentContext } from './agent-context.js';
import type { StagedIdentity } from './journal.js';

/**
 * The downloaded image in staging on its way into place: checked against the signed manifest,
 * checked by e2fsck, renamed next to the other images. A staged image that fails a check is
 * deleted, so the next run downloads it again.
 */
export async function verifyStaged(ctx: AgentContext): Promise<void> {
  const target = ctx.journal.j.target!.version;
  const m = await ctx.manifests.get(target);
  const file = ctx.dir.staged(target);
  const st = await fsp.stat(file);
  // The transport hashed this very file (same inode, size and mtime) against the manifest; a
  // second pass over the whole image (17-19 s of a TCG guest for 1 GiB) proves nothing new.
  const hashed = sameFile(ctx.journal.j.target?.staged, st) && st.size === m.image.size;
  if (hashed) ctx.log(`${target}: the image was hashed against its signed manifest as it was written; not hashing it again`);
  const sum = hashed ? m.image.sha256 : await sha256File(file);
  if (st.size !== m.image.size || sum !== m.image.sha256) {
    await fsp.rm(file, { force: true });
    throw new IbuError(
      'IMAGE_HASH_MISMATCH',
      `The downloaded image ${target} does not match its signed manifest (sha256 ${sum}, expected ${m.image.sha256}); ` +
        'it was deleted and will be downloaded again on the next run.',
    );
  }
  // The sha256 above binds the appended tree to the signed manifest; this checks that the tree
  // and the signed root hash agree, so a bad publish is caught here and not at the trial boot.
  if (m.verity) {
    await verifyVerityTree(file, m.verity).catch(async (err) => {
      await fsp.rm(file, { force: true });
      throw err;
    });
  }
  await ctx.journal.record({ step: 'verify' });
}

/** The identity a transport's verified output is recorded under (Journal target.staged). */
export async function stagedIdentity(file: string): Promise<StagedIdentity> {
  const st = await fsp.stat(file);
  return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
}

function sameFile(id: StagedIdentity | undefined, st: StagedIdentity): boolean {
  return !!id && id.ino === st.ino && id.size === st.size && id.mtimeMs === st.mtimeMs;
}

export async function fsckStaged(ctx: AgentContext): Promise<void> {
  const target = ctx.journal.j.target!.version;
  const file = ctx.dir.staged(target);
  const r = await run('e2fsck', ['-n', '-f', file], { allowFailure: true });
  if (r.code !== 0) {
    await fsp.rm(file, { force: true });
    const tail = r.stdout.trim().split('\n').slice(-3).join(' ');
    throw new IbuError('IMAGE_FSCK_FAILED', `e2fsck -n found errors in ${target} (exit ${r.code}): ${tail}; the image was deleted.`);
  }
  await ctx.journal.record({ step: 'fsck' });
}

export async function installStaged(ctx: AgentContext): Promise<void> {
  const target = ctx.journal.j.target!.version;
  const final = ctx.dir.image(target);
  if (!(await exists(final))) {
    await fsp.rename(ctx.dir.staged(target), final);
    await fsyncDir(ctx.cfg.imagesDir);
  }
  await ctx.journal.record({ step: 'install' });
}

export async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}
