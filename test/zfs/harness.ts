/**
 * The ZFS test guest: Debian's kernel (the one linux-image-amd64 depends on) with ZFS modules
 * built by dkms from zfs-dkms (scripts/zfs-setup.sh, cached by kernel ABI + ZFS version), booted
 * in QEMU under TCG. The guest's root is an overlay of Debian's zfsutils-linux + udev over the
 * host's own root (9p, read-only), its writes going to a scratch disk: so the guest has the real
 * `zpool`/`zfs`, udevd, and every host tool the product shells out to (node, zstd, e2fsprogs,
 * util-linux, rsync, coreutils), and the ibu checkout at its host path with its node_modules.
 * The host gets no ZFS. How it is built and what it costs: docs/zfs-tests.md.
 * No top-level side effects: node --test may load this file on its own.
 */
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateKeys } from '../../src/release/keys.js';
import { run } from '../../src/util/exec.js';
import { repoRoot } from '../e2e/harness.js';

export { repoRoot };

/** What scripts/zfs-setup.sh resolved and built (versions for logs, paths for QEMU). */
export interface ZfsKit {
  /** Kernel ABI, e.g. 6.1.0-56-amd64. */
  kver: string;
  kernelPkg: string;
  kernelVersion: string;
  vmlinuz: string;
  initrd: string;
  /** The cached dkms build: spl.ko, zfs.ko, ... and BUILDINFO. */
  modulesDir: string;
  /** zfsutils-linux + libraries + udev, unpacked and usr-merged (the guest's top layer). */
  userland: string;
  /** zfs-dkms / zfsutils-linux package version, e.g. 2.1.11-1+deb12u1. */
  zfsVersion: string;
  udevVersion: string;
  /** Seconds the dkms build took in this setup run; 0 on a cache hit. */
  buildSeconds: number;
}

/** Why the ZFS guest tests cannot run here, or null when they can (always null in CI). */
export function zfsUnavailable(): string | null {
  // In CI the guest must run: a missing tool there is a failure, not a skip.
  if (process.env.CI) return null;
  if (process.env.IBU_ZFS_SKIP === '1') return 'IBU_ZFS_SKIP=1';
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'the ZFS guest needs Linux on x86-64';
  if (process.getuid?.() !== 0) return 'the ZFS guest needs root (apt-get download, dkms, mknod, mke2fs on disk files)';
  for (const f of ['/usr/bin/qemu-system-x86_64', '/bin/busybox', '/usr/bin/apt-get']) {
    if (!existsSync(f)) return `${f} is missing: run scripts/install-deps.sh`;
  }
  if (!existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js'))) return 'dist/ is not built (npm run build)';
  return null;
}

let kitPromise: Promise<ZfsKit> | null = null;

/**
 * Runs scripts/zfs-setup.sh once per process (idempotent; seconds with a warm cache, a few
 * minutes when the modules must be built) and returns what it printed.
 */
export function zfsKit(): Promise<ZfsKit> {
  kitPromise ??= (async () => {
    const res = await run('bash', [path.join(repoRoot(), 'scripts/zfs-setup.sh')], { stdio: ['ignore', 'pipe', 'pipe'] });
    const v: Record<string, string> = {};
    for (const line of res.stdout.split('\n')) {
      const m = /^IBU_ZFS_([A-Z0-9_]+)=(.*)$/.exec(line);
      if (m) v[m[1]] = m[2];
    }
    const need = ['KVER', 'KERNEL_PKG', 'KERNEL_VERSION', 'VMLINUZ', 'INITRD', 'MODULES_DIR', 'USERLAND', 'VERSION', 'UDEV_VERSION'];
    const missing = need.filter((k) => !v[k]);
    if (missing.length)
      throw new Error(`scripts/zfs-setup.sh printed no ${missing.map((k) => 'IBU_ZFS_' + k).join(', ')}:\n${res.stdout}\n${res.stderr.slice(-3000)}`);
    return {
      kver: v.KVER,
      kernelPkg: v.KERNEL_PKG,
      kernelVersion: v.KERNEL_VERSION,
      vmlinuz: v.VMLINUZ,
      initrd: v.INITRD,
      modulesDir: v.MODULES_DIR,
      userland: v.USERLAND,
      zfsVersion: v.VERSION,
      udevVersion: v.UDEV_VERSION,
      buildSeconds: Number(v.BUILD_SECONDS ?? 0),
    };
  })();
  kitPromise.catch(() => {
    kitPromise = null; // a failed setup (e.g. network) is retried by the next caller
  });
  return kitPromise;
}

export interface ZfsGuestResult {
  /** The script's exit status (from the guest's `IBU-ZFS EXIT <n>` line); null if it never finished. */
  exitCode: number | null;
  /** The serial console, CRs and ANSI escapes removed, lines NOT time-stamped (for parsing). */
  log: string;
  /** The serial console on disk, each line stamped with seconds since QEMU started (for reading). */
  logFile: string;
  /** True when the harness killed QEMU at timeoutMs. */
  timedOut: boolean;
}

export interface ZfsGuestOptions {
  /** Bash script run by the guest (cwd /share) after the ZFS modules are loaded and udevd runs. */
  script: string;
  /** Raw disk files (created sparse when missing, left as they are when present): /dev/vdb, /dev/vdc, ... in order. */
  disks: { file: string; sizeMiB: number }[];
  /** Host dir mounted read-write at /share in the guest (inputs in, results out). */
  share: string;
  /** Where the serial console goes (time-stamped lines). */
  logFile: string;
  /** Default 600 s. */
  timeoutMs?: number;
  /** Guest RAM, default 2048 MiB (a quarter of it is the ZFS ARC's limit). */
  memMiB?: number;
  /** Guest CPUs, default 1 (the host's cores are shared; TCG is slow either way). */
  cpus?: number;
  /** Extra environment for the script (names: [A-Za-z_][A-Za-z0-9_]*). */
  env?: Record<string, string>;
  /** Called with each serial line (unstamped) as it arrives. */
  onLine?: (line: string) => void;
}

/** The scratch disk /dev/vda: the upper layer of the guest's root (so /tmp, /var, ... are on disk, not in RAM). */
const SCRATCH_GIB = 16;
const ANSI_ESCAPE = new RegExp(String.fromCharCode(27) + '\\[[0-9;?=]*[A-Za-z]', 'g');
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** QEMU -virtfs/-drive option values: a comma in a path is written twice. */
function qemuPath(p: string): string {
  return p.replace(/,/g, ',,');
}

/**
 * Boots the ZFS guest, runs `opts.script` in it with bash and returns its exit status and the
 * serial log. Never outlives timeoutMs (QEMU is killed, timedOut=true) nor the calling process.
 * In the guest: /dev/vdb... are opts.disks, /share is opts.share, the ibu checkout is at its host
 * path (writes to it stay in the guest), `zpool`/`zfs` are Debian's zfsutils-linux, udevd runs,
 * lo is up, and $IBU_REPO, $IBU_ZFS_VERSION, $IBU_ZFS_KVER are set.
 */
export async function runZfsGuest(opts: ZfsGuestOptions): Promise<ZfsGuestResult> {
  const kit = await zfsKit();
  const repo = repoRoot();
  const share = path.resolve(opts.share);
  if (!(await fsp.stat(share)).isDirectory()) throw new Error(`share ${share} is not a directory`);
  for (const d of opts.disks) {
    if (!Number.isInteger(d.sizeMiB) || d.sizeMiB <= 0) throw new Error(`disk ${d.file}: sizeMiB must be a positive integer, got ${d.sizeMiB}`);
  }
  if (opts.disks.length > 20) throw new Error(`${opts.disks.length} disks: at most 20 (/dev/vdb ... /dev/vdu)`);
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (!ENV_NAME.test(k)) throw new Error(`env name '${k}' is not a shell variable name`);
    if (v.includes('\0')) throw new Error(`env ${k} contains a NUL byte`);
  }
  const ctl = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-zfs-guest-'));
  // the kernel command line carries the control dir's path: no spaces allowed there
  if (/\s/.test(ctl)) throw new Error(`the temp dir ${ctl} contains whitespace; set TMPDIR to a plain path`);
  let child: ReturnType<typeof spawn> | null = null;
  // the whole group: timeout(1) and QEMU under it
  const killGroup = () => {
    if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  process.once('exit', killGroup);
  try {
    await fsp.copyFile(path.join(repo, 'test/zfs/guest-stage2.sh'), path.join(ctl, 'stage2.sh'));
    await fsp.writeFile(path.join(ctl, 'script.sh'), opts.script);
    const env: Record<string, string> = { IBU_REPO: repo, IBU_ZFS_VERSION: kit.zfsVersion, IBU_ZFS_KVER: kit.kver, ...opts.env };
    await fsp.writeFile(
      path.join(ctl, 'env.sh'),
      Object.entries(env)
        .map(([k, v]) => `${k}=${shellQuote(v)}\n`)
        .join(''),
    );
    const scratch = path.join(ctl, 'scratch.img');
    // few inodes, and the guest mounts it with noinit_itable: no background zeroing of inode tables
    await run('mke2fs', [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-m',
      '0',
      '-i',
      '262144',
      '-E',
      'lazy_itable_init=1,lazy_journal_init=1',
      '-L',
      'ibu-zfs-scratch',
      scratch,
      `${SCRATCH_GIB}G`,
    ]);
    const drives = ['-drive', `file=${qemuPath(scratch)},format=raw,if=virtio,cache=unsafe`];
    for (const d of opts.disks) {
      if (!existsSync(d.file)) {
        await fsp.mkdir(path.dirname(d.file), { recursive: true });
        await fsp.writeFile(d.file, '');
        await fsp.truncate(d.file, d.sizeMiB * 1048576);
      }
      drives.push('-drive', `file=${qemuPath(path.resolve(d.file))},format=raw,if=virtio,cache=unsafe`);
    }
    const memMiB = opts.memMiB ?? 2048;
    const append = ['console=ttyS0,115200', 'quiet', 'no_timer_check', 'panic=-1', `ibu.ctl=${ctl}`, `ibu.arc_max=${Math.floor(memMiB / 4) * 1048576}`].join(
      ' ',
    );
    const args = [
      '-accel',
      'tcg',
      '-cpu',
      process.env.IBU_ZFS_QEMU_CPU ?? 'max',
      '-m',
      String(memMiB),
      '-smp',
      String(opts.cpus ?? 1),
      '-nodefaults',
      '-display',
      'none',
      '-monitor',
      'none',
      '-serial',
      'stdio',
      '-no-reboot',
      '-nic',
      'none',
      '-device',
      'virtio-rng-pci',
      '-virtfs',
      'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
      '-virtfs',
      `local,path=${qemuPath(kit.userland)},mount_tag=zfsuser,security_model=none,readonly=on`,
      '-virtfs',
      `local,path=${qemuPath(share)},mount_tag=share,security_model=none,multidevs=remap`,
      ...drives,
      '-kernel',
      kit.vmlinuz,
      '-initrd',
      kit.initrd,
      '-append',
      append,
    ];
    const lines: string[] = [];
    await fsp.mkdir(path.dirname(path.resolve(opts.logFile)), { recursive: true });
    const out = createWriteStream(opts.logFile);
    out.on('error', (e) => lines.push(`# cannot write ${opts.logFile}: ${e.message}`));
    out.write(`# kernel ${kit.kernelPkg} ${kit.kernelVersion}, zfs ${kit.zfsVersion}, udev ${kit.udevVersion}\n`);
    out.write(`# qemu-system-x86_64 ${args.join(' ')}\n`);
    const t0 = Date.now();
    const secs = () => ((Date.now() - t0) / 1000).toFixed(3).padStart(8);
    // nice: the host's cores are shared with other jobs; the guest only needs to finish.
    // timeout(1) in its own process group: should this process die without running its exit
    // handlers (SIGTERM from a test runner), QEMU still ends shortly after timeoutMs.
    const timeoutMs = opts.timeoutMs ?? 600_000;
    child = spawn(
      'nice',
      ['-n', process.env.IBU_ZFS_NICE ?? '10', 'timeout', '-s', 'KILL', `${Math.ceil(timeoutMs / 1000) + 30}`, 'qemu-system-x86_64', ...args],
      { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    );
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, timeoutMs);
    let pending = '';
    const take = (chunk: Buffer) => {
      pending += chunk.toString('latin1').replace(/\r/g, '').replace(ANSI_ESCAPE, '');
      const parts = pending.split('\n');
      pending = parts.pop() ?? '';
      const t = secs();
      for (const l of parts) {
        lines.push(l);
        out.write(`[${t}] ${l}\n`);
        opts.onLine?.(l);
      }
    };
    child.stdout?.on('data', take);
    child.stderr?.on('data', take);
    const code = await new Promise<number | null>((resolve) => {
      child?.on('error', (e) => {
        lines.push(`# cannot start qemu: ${e.message}`);
        resolve(null);
      });
      child?.on('close', (c) => resolve(c));
    });
    clearTimeout(timer);
    if (pending) {
      lines.push(pending);
      out.write(`[${secs()}] ${pending}\n`);
    }
    out.write(`# qemu exit status ${code}, wall ${((Date.now() - t0) / 1000).toFixed(1)} s${timedOut ? ' (killed: timeout)' : ''}\n`);
    // 'close' comes after the last write, and also after a write error
    if (!out.closed)
      await new Promise<void>((resolve) => {
        out.once('close', () => resolve());
        out.end();
      });
    const log = lines.join('\n') + '\n';
    const exits = [...log.matchAll(/^IBU-ZFS EXIT (\d+)/gm)];
    const exitCode = exits.length ? Number(exits[exits.length - 1][1]) : null;
    return { exitCode, log, logFile: opts.logFile, timedOut };
  } finally {
    killGroup();
    process.removeListener('exit', killGroup);
    if (process.env.IBU_ZFS_KEEP === '1') console.log(`ZFS guest control dir kept: ${ctl}`);
    else await fsp.rm(ctl, { recursive: true, force: true });
  }
}

/** One line for test logs: what the guest runs. */
export function describeKit(kit: ZfsKit): string {
  return `kernel ${kit.kernelPkg} ${kit.kernelVersion}, zfs ${kit.zfsVersion} (modules ${kit.buildSeconds ? `built in ${kit.buildSeconds} s` : 'cached'}), udev ${kit.udevVersion}`;
}

/** Sizes of the three data disks a release-to-device scenario boots with. */
export interface ScenarioDiskSizes {
  releaseMiB: number;
  deviceMiB: number;
  workMiB: number;
}

/**
 * What a scenario script finds when it starts: pool `rpool` on /dev/vdb (the release side), pool
 * `dpool` on /dev/vdc (the device), an ext4 work disk /dev/vdd mounted on /w. Printed as
 * `IBU-ZFS scenario-disks ok|FAIL` so a script (or the host) can tell a setup failure apart.
 */
const SCENARIO_DISKS = [
  'if zpool create -f -o ashift=12 -m none rpool /dev/vdb && zpool create -f -o ashift=12 -m none dpool /dev/vdc \\',
  '  && mkfs.ext4 -q -F /dev/vdd && mkdir -p /w && mount /dev/vdd /w',
  'then echo "IBU-ZFS scenario-disks ok"; else echo "IBU-ZFS scenario-disks FAIL"; fi',
].join('\n');

/**
 * Runs a release-to-device scenario in the guest, its files in `work`: the script starts on the
 * disks SCENARIO_DISKS sets up (release pool, device pool, work disk on /w); the serial log is
 * work/guest.log. Disk files left by an earlier run are removed first: runZfsGuest keeps disk
 * files that exist, and a scenario starts from empty disks.
 */
export async function runScenarioGuest(work: string, sizes: ScenarioDiskSizes, opts: Omit<ZfsGuestOptions, 'disks' | 'logFile'>): Promise<ZfsGuestResult> {
  const disks = [
    { file: path.join(work, 'rel.disk'), sizeMiB: sizes.releaseMiB },
    { file: path.join(work, 'dev.disk'), sizeMiB: sizes.deviceMiB },
    { file: path.join(work, 'work.disk'), sizeMiB: sizes.workMiB },
  ];
  for (const d of disks) await fsp.rm(d.file, { force: true });
  return runZfsGuest({ ...opts, script: `${SCENARIO_DISKS}\n${opts.script}`, disks, logFile: path.join(work, 'guest.log') });
}

/** A signing key pair in `keys` (signing.key, signing.pub) and a `keyring` dir that trusts it. */
export async function signingKeyring(keys: string, keyring: string): Promise<void> {
  await generateKeys(keys);
  await fsp.mkdir(keyring, { recursive: true });
  await fsp.copyFile(path.join(keys, 'signing.pub'), path.join(keyring, 'release.pub'));
}
