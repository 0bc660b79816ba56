import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';

/**
 * Thin wrappers around the `zfs` and `zpool` commands (zfsutils-linux). Every call goes through
 * the real tools: ZFS has no stable library interface outside C, and the tools are what
 * operators use and trust.
 */

/** The `zfs` binary; `IBU_ZFS_BIN` lets a host test point at a fake (the tests say so). */
export const zfsBin = (): string => process.env.IBU_ZFS_BIN ?? 'zfs';
export const zpoolBin = (): string => process.env.IBU_ZPOOL_BIN ?? 'zpool';

export function poolOf(dataset: string): string {
  return dataset.split('/')[0]!.split('@')[0]!;
}

/** A dataset name as zfs accepts it: POOL/PATH, no snapshot part. */
export function assertDataset(ds: string, what = 'dataset'): string {
  if (!/^[A-Za-z][A-Za-z0-9_.:-]*(\/[A-Za-z0-9_.:-]+)+$/.test(ds)) {
    throw new IbuError('USAGE', `The ${what} '${ds}' is not a ZFS volume name like POOL/VOLUME (letters, digits, _ . : -; at least one '/').`);
  }
  return ds;
}

/** `zfs get -Hp -o value PROP NAME`; null when NAME does not exist. */
export async function zfsGet(name: string, prop: string): Promise<string | null> {
  const r = await run(zfsBin(), ['get', '-Hp', '-o', 'value', prop, name], { allowFailure: true });
  if (r.code !== 0) {
    if (/does not exist|dataset does not exist/i.test(r.stderr)) return null;
    throw new IbuError('ZFS_FAILED', `zfs get ${prop} ${name} failed: ${r.stderr.trim()}`);
  }
  return r.stdout.trim();
}

export async function exists(name: string): Promise<boolean> {
  return (await zfsGet(name, 'name')) !== null;
}

export interface SnapshotInfo {
  /** The part after '@' (an ibu version). */
  name: string;
  guid: string;
  /** Bytes only this snapshot holds (what destroying it frees). */
  used: number;
  createtxg: number;
}

/** Snapshots of one dataset, oldest first. */
export async function listSnapshots(dataset: string): Promise<SnapshotInfo[]> {
  const r = await run(zfsBin(), ['list', '-Hp', '-t', 'snapshot', '-o', 'name,guid,used,createtxg', '-s', 'createtxg', '-d', '1', dataset], {
    allowFailure: true,
  });
  if (r.code !== 0) {
    if (/does not exist/i.test(r.stderr)) return [];
    throw new IbuError('ZFS_FAILED', `Listing the snapshots of ${dataset} failed: ${r.stderr.trim()}`);
  }
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [name, guid, used, txg] = l.split('\t');
      return { name: name!.slice(name!.indexOf('@') + 1), guid: guid!, used: Number(used), createtxg: Number(txg) };
    });
}

export async function zfs(args: string[], what: string): Promise<string> {
  const r = await run(zfsBin(), args, { allowFailure: true });
  if (r.code !== 0) {
    if (/out of space|no space/i.test(r.stderr))
      throw new IbuError('ZFS_POOL_FULL', `${what}: the pool is full (${r.stderr.trim()}). Free space in the pool or destroy old snapshots.`);
    throw new IbuError('ZFS_FAILED', `${what}: zfs ${args.join(' ')} failed: ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/**
 * Refuses a pool that is not healthy: `zpool status -x` must say healthy and the error line must
 * report no known data errors (a scrub that found checksum errors on a pool without redundancy
 * leaves it ONLINE but with data errors). Receiving into, or exporting from, such a pool could
 * hand GRUB a damaged image.
 */
export async function checkPoolHealthy(pool: string): Promise<void> {
  const x = await run(zpoolBin(), ['status', '-x', pool], { allowFailure: true });
  if (x.code !== 0) {
    if (/no such pool/i.test(x.stderr))
      throw new IbuError('ZFS_BASE_MISSING', `The ZFS pool '${pool}' does not exist; import it or fix zfs.dataset in the agent config.`);
    throw new IbuError('ZFS_FAILED', `zpool status ${pool} failed: ${x.stderr.trim()}`);
  }
  const full = await run(zpoolBin(), ['status', '-v', pool], { allowFailure: true });
  const errLine = /errors:\s*(.*)/.exec(full.stdout)?.[1]?.trim() ?? '';
  const healthy = new RegExp(`pool '${pool.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' is healthy`).test(x.stdout) || /all pools are healthy/.test(x.stdout);
  if (!healthy || (errLine && !/^No known data errors/i.test(errLine))) {
    const state = /state:\s*(\S+)/.exec(full.stdout)?.[1] ?? 'unknown';
    throw new IbuError(
      'ZFS_POOL_CORRUPT',
      `The ZFS pool '${pool}' is not healthy (state ${state}; ${errLine || x.stdout.trim().split('\n')[0]}); ` +
        `ibu refuses to receive into or export from it. ` +
        `Run 'zpool status -v ${pool}', repair or restore the pool, then 'zpool clear ${pool}'.`,
      {
        details: { state, errors: errLine },
      },
    );
  }
}

/** /dev/zvol/<dataset>, waiting for udev to create the link (it appears asynchronously). */
export async function zvolDevice(dataset: string, timeoutMs = 30_000): Promise<string> {
  const dev = `/dev/zvol/${dataset}`;
  const until = Date.now() + timeoutMs;
  let settled = false;
  for (;;) {
    try {
      await fsp.access(dev);
      return dev;
    } catch {
      if (!settled) {
        settled = true;
        await run('udevadm', ['settle', '--timeout=10'], { allowFailure: true }).catch(() => undefined);
        continue;
      }
      if (Date.now() > until)
        throw new IbuError('ZFS_FAILED', `The zvol device ${dev} did not appear within ${timeoutMs / 1000} s; is udevd running (it creates /dev/zvol links)?`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Spawns a tool whose stdin/stdout the caller streams; stderr is collected for the error message. */
export function spawnTool(
  cmd: string,
  args: string[],
  stdio: ['pipe' | 'ignore', 'pipe' | 'ignore' | number, 'pipe'],
  signal?: AbortSignal,
): { child: ChildProcess; done: Promise<{ code: number; stderr: string }> } {
  const child = spawn(cmd, args, { stdio });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString('utf8')).slice(-4000);
  });
  const onAbort = (): void => void child.kill('SIGTERM');
  signal?.addEventListener('abort', onAbort, { once: true });
  const done = new Promise<{ code: number; stderr: string }>((resolve, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        new IbuError(
          e.code === 'ENOENT' ? 'TOOL_MISSING' : 'TOOL_FAILED',
          e.code === 'ENOENT' ? `${cmd} is not installed (ZFS needs zfsutils-linux; zstd the zstd package).` : `${cmd}: ${e.message}`,
          { cause: e },
        ),
      );
    });
    child.on('close', (code, sig) => {
      signal?.removeEventListener('abort', onAbort);
      resolve({ code: code ?? (sig ? 128 : 1), stderr });
    });
  });
  return { child, done };
}
