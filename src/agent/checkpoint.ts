import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { run } from '../util/exec.js';
import { IbuError } from '../errors.js';
import { mountFor, parseMountInfo } from '../boot/env-location.js';
import { processAlive as isAlive } from '../util/process.js';

/**
 * GRUB reads the host filesystem without replaying its ext4 journal, so a renamed image file or
 * a newly created grubenv is invisible to it (or worse, half visible) until the journal is
 * checkpointed into place. `fsfreeze -f` forces exactly that (ext4_freeze flushes the journal);
 * we thaw right after. A marker in /run (gone after a reboot, which also thaws) lets the next run
 * thaw a filesystem a killed agent left frozen, and only one we froze ourselves.
 */
function markerFor(mountPoint: string): string {
  return mountPoint.replace(/[^A-Za-z0-9]/g, '_');
}

async function markerDir(): Promise<string> {
  const base = await fsp.access('/run').then(
    () => '/run/ibu',
    () => path.join(os.tmpdir(), 'ibu-run'),
  );
  await fsp.mkdir(base, { recursive: true });
  return base;
}

export async function mountPointOf(dir: string): Promise<string> {
  const real = await fsp.realpath(dir);
  const m = mountFor(parseMountInfo(await fsp.readFile('/proc/self/mountinfo', 'utf8')), real);
  return m?.mountPoint ?? '/';
}

export async function checkpointFilesystem(dir: string, mode: 'fsfreeze' | 'sync'): Promise<string> {
  const mp = await mountPointOf(dir);
  await run('sync', ['-f', dir]);
  if (mode === 'sync') return `synced ${mp} (no fsfreeze: checkpoint=sync)`;
  const marker = path.join(await markerDir(), `frozen-${markerFor(mp)}`);
  // The marker names our pid, so another agent run only thaws it once we are gone.
  await fsp.writeFile(marker, `${mp}\n${process.pid}\n`);
  try {
    await run('fsfreeze', ['--freeze', mp]);
  } catch (err) {
    await fsp.rm(marker, { force: true });
    throw err;
  }
  try {
    const r = await run('fsfreeze', ['--unfreeze', mp], { allowFailure: true });
    // "Invalid argument" means it is no longer frozen (someone thawed it): the checkpoint,
    // which the freeze itself performed, still happened.
    if (r.code !== 0 && !/Invalid argument/i.test(r.stderr)) {
      throw new IbuError('TOOL_FAILED', `fsfreeze --unfreeze ${mp} failed: ${r.stderr.trim()}`);
    }
  } finally {
    await fsp.rm(marker, { force: true }).catch(() => {});
  }
  return `checkpointed ${mp} (fsfreeze)`;
}

/** Thaws filesystems a killed agent left frozen (markers written before each freeze). */
export async function thawLeftovers(): Promise<string[]> {
  const dir = await markerDir();
  const thawed: string[] = [];
  for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith('frozen-')) continue;
    const file = path.join(dir, name);
    const [mp, pid] = (await fsp.readFile(file, 'utf8').catch(() => '')).split('\n');
    if (pid && Number(pid) !== process.pid && isAlive(Number(pid))) continue; // still checkpointing
    if (mp) {
      const r = await run('fsfreeze', ['--unfreeze', mp], { allowFailure: true });
      if (r.code === 0) thawed.push(mp);
    }
    await fsp.rm(file, { force: true });
  }
  return thawed;
}
