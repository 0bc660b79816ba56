import { promises as fsp } from 'node:fs';
import type { Manifest } from '../release/types.js';
import { fsyncDir } from '../util/atomic.js';
import type { AgentContext } from './agent-context.js';
import { bytesToAllocate, freeBytes, noSpaceError, planCleanup, type ImageFile } from './disk-policy.js';
import type { DeviceFacts } from './state-machine.js';

async function allocated(p: string): Promise<number> {
  const st = await fsp.stat(p).catch(() => null);
  return st ? st.blocks * 512 : 0;
}

/** Exact bytes the target still needs: the fs blocks its non-zero chunks touch, minus what the partial holds. */
async function neededBytes(ctx: AgentContext, m: Manifest, blockSize: number): Promise<number> {
  let have = 0;
  for (const p of [ctx.dir.partial(m.version), ctx.dir.staged(m.version)]) have += await allocated(p);
  return Math.max(0, bytesToAllocate(m.chunks, blockSize) - have);
}

/**
 * Makes room for the target before the download starts, by the disk policy (disk-policy.ts):
 * old images and other versions' partial downloads go, oldest first; never the running image,
 * the committed default, a pending trial or the target. Returns what was removed.
 */
export async function reserveSpace(ctx: AgentContext, f: DeviceFacts): Promise<string[]> {
  const { dir } = ctx;
  const target = ctx.journal.j.target!.version;
  const m = await ctx.manifests.get(target);
  const st = await fsp.statfs(ctx.cfg.imagesDir);
  const needed = await neededBytes(ctx, m, Number(st.bsize));
  const files: ImageFile[] = [];
  for (const v of f.installed) files.push({ version: v, kind: 'image', allocated: await allocated(dir.image(v)) });
  const staged = await dir.stagingFiles();
  const byVersion = new Map<string, number>();
  for (const s of staged) if (s.version !== target) byVersion.set(s.version, (byVersion.get(s.version) ?? 0) + (await allocated(s.file)));
  for (const [v, bytes] of byVersion) files.push({ version: v, kind: 'partial', allocated: bytes });
  const protect = [f.running, f.boot.defaultImage, f.boot.tryImage, target].filter((x): x is string => !!x);
  const plan = planCleanup({
    freeBytes: await freeBytes(ctx.cfg.imagesDir),
    neededBytes: needed,
    imageBytes: needed + (await allocated(dir.partial(target))),
    reserveBytes: ctx.cfg.space.reserveBytes,
    keepImages: ctx.cfg.space.keepImages,
    files,
    protect,
  });
  if (!plan.ok) throw noSpaceError(plan, ctx.cfg.imagesDir, target);
  const removed: string[] = [];
  for (const r of plan.remove) {
    if (protect.includes(r.version)) continue; // belt and braces: the plan never lists these
    if (r.kind === 'image') {
      await fsp.rm(dir.image(r.version), { force: true });
      await ctx.manifests.remove(r.version);
      removed.push(`${r.version}.img`);
    } else {
      for (const s of staged) if (s.version === r.version) await fsp.rm(s.file, { force: true });
      removed.push(`${r.version} (partial download)`);
    }
  }
  if (removed.length) {
    await fsyncDir(ctx.cfg.imagesDir);
    ctx.log(`disk policy removed ${removed.join(', ')}`);
  }
  await ctx.journal.record({ step: 'reserve-space' });
  return removed;
}
