/**
 * The effects around reboot-method.ts: gather the facts the choice needs, and prepare a fast
 * switch (kexec: load the target's kernel; soft-reboot: mount the target at /run/nextroot).
 * Neither writes grubenv: the trial is not "try once" there, so a firmware reboot from anywhere
 * in the trial (panic, watchdog, failed health check) boots the committed default.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { Ext4Reader } from '../image/ext4/index.js';
import { run } from '../util/exec.js';
import type { AgentContext } from './agent-context.js';
import { kexecCommandLine, parseLockdown, parseSystemdVersion, type RebootMethod, type SwitchFacts } from './reboot-method.js';

/** Where /sys and /proc are read (tests point IBU_SWITCH_PROBE_ROOT at a generated tree). */
function probe(p: string): string {
  return path.join(process.env.IBU_SWITCH_PROBE_ROOT ?? '/', p);
}

const readOr = (file: string): Promise<string | null> => fsp.readFile(file, 'utf8').catch(() => null);

/** This boot's id; a kexec gives a new one, a soft-reboot keeps it. */
export async function bootId(): Promise<string | null> {
  return (await readOr(probe('proc/sys/kernel/random/boot_id')))?.trim() || null;
}

async function onPath(tool: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (!dir) continue;
    try {
      await fsp.access(path.join(dir, tool), 1 /* X_OK */);
      return true;
    } catch {
      // next
    }
  }
  return false;
}

function digest(r: Ext4Reader, file: string): string | null {
  try {
    return createHash('sha256').update(r.readFile(file)).digest('hex');
  } catch {
    return null;
  }
}

/** Whether two images carry byte-identical /vmlinuz and /initrd.img (read without mounting). */
export function sameKernel(imageA: string, imageB: string): boolean | null {
  let a: Ext4Reader | null = null;
  let b: Ext4Reader | null = null;
  try {
    a = Ext4Reader.open(imageA);
    b = Ext4Reader.open(imageB);
    for (const f of ['/vmlinuz', '/initrd.img']) {
      const x = digest(a, f);
      const y = digest(b, f);
      if (x === null || y === null) return null;
      if (x !== y) return false;
    }
    return true;
  } catch {
    return null;
  } finally {
    a?.close();
    b?.close();
  }
}

export async function gatherSwitchFacts(ctx: AgentContext, running: string | null, target: string): Promise<SwitchFacts> {
  const kernel = await fsp
    .access(probe('sys/kernel/kexec_loaded'))
    .then(() => true)
    .catch(() => false);
  const lockdown = parseLockdown(await readOr(probe('sys/kernel/security/lockdown')));
  let systemd: number | null = null;
  if (await readOr(probe('proc/1/comm')).then((c) => c?.trim() === 'systemd')) {
    const v = await run('systemctl', ['--version'], { allowFailure: true }).catch(() => null);
    systemd = v ? parseSystemdVersion(v.stdout) : null;
  }
  const same = running ? sameKernel(ctx.dir.image(running), ctx.dir.image(target)) : null;
  return { sameKernel: same, kexec: { kernel, lockdown, tool: await onPath('kexec') }, systemd };
}

/**
 * kexec: the target's /vmlinuz and /initrd.img, read from the verified image file with the ext4
 * reader (no mount), loaded with the command line GRUB would have given the trial. The copies
 * live in /run (RAM) only until the kernel holds them.
 */
export async function loadKexec(ctx: AgentContext, target: string): Promise<string> {
  const dir = path.join(process.env.IBU_RUN_DIR ?? '/run/ibu', 'kexec');
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const kernel = path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initrd.img');
  const r = Ext4Reader.open(ctx.dir.image(target));
  try {
    await fsp.writeFile(kernel, r.readFile('/vmlinuz'));
    await fsp.writeFile(initrd, r.readFile('/initrd.img'));
  } catch (err) {
    throw new IbuError('IMAGE_INVALID', `Cannot read /vmlinuz and /initrd.img from ${ctx.dir.image(target)} for kexec: ${(err as Error).message}`, {
      cause: err,
    });
  } finally {
    r.close();
  }
  const cmdline = kexecCommandLine((await readOr(ctx.cfg.cmdlineFile)) ?? '', target);
  try {
    await run('kexec', ['-l', kernel, `--initrd=${initrd}`, `--command-line=${cmdline}`]);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
  return cmdline;
}

/** Undoes a prepared fast switch (a cancelled apply): unload the kexec kernel. */
export async function unloadSwitch(method: RebootMethod): Promise<void> {
  if (method === 'kexec') await run('kexec', ['-u'], { allowFailure: true }).catch(() => undefined);
}

/** Where systemd's soft-reboot looks for the next root. */
export const NEXTROOT = '/run/nextroot';

/**
 * soft-reboot: the target loop-mounted at /run/nextroot (ro or rw like the running root), with the host partition bound
 * at its /host the way the initramfs mounts it (assets/initramfs-tools), so the new root finds its
 * images and grubenv where a normal boot puts them. systemd then switches into it.
 */
export async function mountNextRoot(ctx: AgentContext, target: string): Promise<void> {
  const root = process.env.IBU_NEXTROOT ?? NEXTROOT;
  await fsp.mkdir(root, { recursive: true });
  const mounted = (await readOr('/proc/self/mountinfo'))?.split('\n').some((l) => l.split(' ')[4] === root);
  // the same mode as the running root (the initramfs mounts it ro or rw, boot.md): a ro trial
  // root on a rw appliance would fail its services, not the release
  if (!mounted) await run('mount', ['-o', `loop,${await rootMode()}`, ctx.dir.image(target), root]);
  const host = path.join(root, ctx.cfg.hostMount);
  const hostMounted = (await readOr('/proc/self/mountinfo'))?.split('\n').some((l) => l.split(' ')[4] === host);
  if (!hostMounted) await run('mount', ['--bind', ctx.cfg.hostMount, host]);
}

/** 'ro' or 'rw': how / is mounted now (the last mount on / in mountinfo is the one in use). */
async function rootMode(): Promise<'ro' | 'rw'> {
  const root = (await readOr('/proc/self/mountinfo'))
    ?.split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[4] === '/')
    .at(-1);
  return root?.[5]?.split(',').includes('rw') ? 'rw' : 'ro';
}
