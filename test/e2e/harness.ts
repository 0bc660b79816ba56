/**
 * The e2e harness: builds real boot media (GPT disk, ESP with GRUB EFI, host ext4 holding image
 * files) and boots them in QEMU (TCG) under OVMF, capturing the guest's serial console into a
 * time-stamped log. Nothing here is mocked: real kernel (Debian's linux-image .deb), real GRUB,
 * real e2fsprogs. No top-level side effects: node --test may load this file on its own.
 */
import { spawn } from 'node:child_process';
import { promises as fsp, existsSync, createWriteStream, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/util/exec.js';
import { GrubBootloader } from '../../src/boot/grub-bootloader.js';
import type { BootState } from '../../src/boot/bootloader.js';

/** The checkout root (works from test/e2e/*.ts under tsx and from dist/test/e2e/*.js). */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'assets'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the ibu checkout above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export const HOST_UUID = '1e0f4b8a-3c2d-4e5f-8a9b-0c1d2e3f4a5b';
export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
/**
 * Kernel arguments the tests add: serial console, quiet kernel (panics still print), and
 * no_timer_check: on a loaded host TCG runs so slowly that the kernel's IO-APIC timer check
 * fails ("Kernel panic - not syncing: IO-APIC + timer doesn't work!"), seen here at load 14.
 */
export const TEST_CMDLINE = 'console=ttyS0,115200 quiet no_timer_check';

export interface KernelKit {
  kver: string;
  kernelDir: string;
  vmlinuz: string;
  modulesDir: string;
  e2fsckStatic: string;
}

/** Why the e2e suite cannot run here, or null when it can. */
export function e2eUnavailable(): string | null {
  // In CI the boots must run: a missing tool there is a failure, not a skip.
  if (process.env.CI) return null;
  if (process.platform !== 'linux') return 'the e2e boots need Linux';
  if (process.getuid?.() !== 0) return 'the e2e boots need root (mknod, debugfs on disk images, apt-get download)';
  for (const f of ['/usr/bin/qemu-system-x86_64', OVMF_CODE, '/usr/bin/grub-mkstandalone', '/bin/busybox', '/usr/bin/mcopy']) {
    if (!existsSync(f)) return `${f} is missing: run scripts/install-deps.sh`;
  }
  return null;
}

/** Runs scripts/e2e-setup.sh (idempotent; cached under /var/cache/ibu-e2e) and returns its paths. */
export async function kernelKit(): Promise<KernelKit> {
  const res = await run('bash', [path.join(repoRoot(), 'scripts/e2e-setup.sh')]);
  const vars: Record<string, string> = {};
  for (const line of res.stdout.split('\n')) {
    const m = /^(IBU_E2E_[A-Z0-9_]+)=(.*)$/.exec(line);
    if (m) vars[m[1]] = m[2];
  }
  const kver = vars.IBU_E2E_KVER;
  const kernelDir = vars.IBU_E2E_KERNEL_DIR;
  if (!kver || !kernelDir || !vars.IBU_E2E_E2FSCK_STATIC) throw new Error('scripts/e2e-setup.sh printed no kernel paths:\n' + res.stdout + res.stderr);
  return {
    kver,
    kernelDir,
    vmlinuz: path.join(kernelDir, 'boot', `vmlinuz-${kver}`),
    modulesDir: path.join(kernelDir, 'lib/modules', kver),
    e2fsckStatic: vars.IBU_E2E_E2FSCK_STATIC,
  };
}

export async function buildInitramfs(kit: KernelKit, out: string, extraModules: string[] = []): Promise<void> {
  const args = [path.join(repoRoot(), 'assets/initramfs/build-initramfs.sh'), '--modules-dir', kit.modulesDir, '--e2fsck', kit.e2fsckStatic, '--out', out];
  if (extraModules.length) args.push('--extra-modules', extraModules.join(' '));
  await run('bash', args);
}

export async function buildEfi(out: string): Promise<void> {
  await run('bash', [path.join(repoRoot(), 'assets/grub/make-efi.sh'), HOST_UUID, out]);
}

/** A busybox root tree with the test /sbin/init; kernel and initrd unless `kernel: false`. */
export async function stageBusyboxRoot(dir: string, opts: { version: string; variant: string; kit: KernelKit; initrd: string; kernel?: boolean }): Promise<void> {
  await fsp.rm(dir, { recursive: true, force: true });
  for (const d of ['bin', 'sbin', 'etc/ibu-e2e', 'dev', 'proc', 'sys', 'host', 'tmp', 'run', 'root']) {
    await fsp.mkdir(path.join(dir, d), { recursive: true });
  }
  await fsp.copyFile('/bin/busybox', path.join(dir, 'bin/busybox'));
  const applets = (await run('/bin/busybox', ['--list'])).stdout.split('\n').filter((a) => a && a !== 'busybox');
  for (const a of applets) {
    const target = path.join(dir, 'bin', a);
    if (!existsSync(target)) await fsp.symlink('busybox', target);
  }
  const init = path.join(dir, 'sbin/init');
  await fsp.rm(init, { force: true });
  await fsp.copyFile(path.join(repoRoot(), 'test/e2e/image-init.sh'), init);
  await fsp.chmod(init, 0o755);
  await fsp.mkdir(path.join(dir, 'lib/ibu'), { recursive: true });
  await fsp.copyFile(path.join(repoRoot(), 'assets/initramfs/ibu-boot.sh'), path.join(dir, 'lib/ibu/ibu-boot.sh'));
  await fsp.writeFile(path.join(dir, 'etc/ibu-e2e/version'), opts.version + '\n');
  await fsp.writeFile(path.join(dir, 'etc/ibu-e2e/variant'), opts.variant + '\n');
  if (opts.kernel !== false) {
    await fsp.copyFile(opts.kit.vmlinuz, path.join(dir, 'vmlinuz'));
    await fsp.copyFile(opts.initrd, path.join(dir, 'initrd.img'));
  }
}

/** A root tree with Node and the built ibu project (test/e2e/stage-node-root.sh). */
export async function stageNodeRoot(dir: string, opts: { version: string; kit: KernelKit; initrd: string }): Promise<void> {
  await run('bash', [path.join(repoRoot(), 'test/e2e/stage-node-root.sh'), '--out', dir, '--version', opts.version,
    '--vmlinuz', opts.kit.vmlinuz, '--initrd', opts.initrd, '--modules-dir', opts.kit.modulesDir, '--e2fsck', opts.kit.e2fsckStatic]);
}

/**
 * QEMU user networking for a guest that may reach exactly one host service: restrict=on cuts
 * every outside route, and one guestfwd maps 10.0.2.100:80 in the guest to 127.0.0.1:port on the
 * host (a `busybox nc` per connection; the chardev form serves one connection only).
 */
export function guestNetArgs(hostPort: number): string[] {
  return ['-device', 'virtio-net-pci,netdev=n0',
    '-netdev', `user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 ${hostPort}`];
}

/**
 * Makes an image file from a root tree with the product's builder, `ibu image build` (so the
 * e2e images are built the way releases are). IBU_E2E_MKE2FS=1 uses plain mke2fs -d instead,
 * which is what the builder wraps (for runs before dist/ is built).
 */
export async function buildImage(root: string, out: string, version: string, sizeMiB: number): Promise<void> {
  const cli = path.join(repoRoot(), 'dist/src/cli/ibu.js');
  if (process.env.IBU_E2E_MKE2FS !== '1') {
    if (!existsSync(cli)) throw new Error(`${cli} is missing: run npm run build (or set IBU_E2E_MKE2FS=1)`);
    const noKernel = existsSync(path.join(root, 'vmlinuz')) ? [] : ['--no-kernel'];
    await run(process.execPath, [path.join(repoRoot(), 'bin/ibu'), 'image', 'build', '--root', root, '--version', version,
      '--size', `${sizeMiB}M`, '--out', out, ...noKernel]);
    return;
  }
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', `ibu-${version}`, '-E', 'root_owner=0:0', '-d', root, out, `${sizeMiB}M`]);
}

/**
 * Cuts an image file short the way an interrupted download would, keeping /vmlinuz and
 * /initrd.img whole (GRUB still loads them; the initramfs' e2fsck is what must notice).
 */
export async function truncateAfterKernel(img: string): Promise<number> {
  const bs = Number(/Block size:\s+(\d+)/.exec((await run('dumpe2fs', ['-h', img], { allowFailure: true })).stdout)?.[1]);
  let last = 0;
  for (const f of ['/vmlinuz', '/initrd.img']) {
    const out = (await run('debugfs', ['-R', `blocks ${f}`, img])).stdout.trim().split(/\s+/).map(Number);
    last = Math.max(last, ...out);
  }
  const size = (await fsp.stat(img)).size;
  const cut = Math.ceil(((last + 1) * bs) / 1048576) * 1048576 + 1048576;
  if (cut >= size) throw new Error(`${img}: kernel and initrd reach the end; nothing to truncate`);
  await fsp.truncate(img, cut);
  return cut;
}

/** grub.cfg for the host partition, generated by assets/grub/10_ibu from the host tree. */
export async function writeGrubCfg(hostTree: string): Promise<void> {
  const res = await run('sh', [path.join(repoRoot(), 'assets/grub/10_ibu')], {
    env: { ...process.env, IBU_HOST: hostTree, IBU_HOST_UUID: HOST_UUID, IBU_CMDLINE: TEST_CMDLINE },
  });
  await fsp.mkdir(path.join(hostTree, 'boot/grub'), { recursive: true });
  await fsp.writeFile(path.join(hostTree, 'boot/grub/grub.cfg'), res.stdout);
}

/** Both env copies (grubenv, grubenv.bak) written by the agent's own code, committing `version`. */
export async function createGrubenv(hostTree: string, version: string): Promise<void> {
  await new GrubBootloader({ dir: path.join(hostTree, 'boot/grub') }).init(version);
}

/** Builds the GPT disk; returns the host partition's byte offset. */
export async function makeDisk(opts: { efi: string; hostTree: string; hostMiB: number; out: string }): Promise<number> {
  const res = await run('bash', [path.join(repoRoot(), 'test/e2e/make-disk.sh'), '--efi', opts.efi, '--host-tree', opts.hostTree,
    '--host-uuid', HOST_UUID, '--host-mib', String(opts.hostMiB), '--out', opts.out]);
  const m = /HOST_OFFSET=(\d+)/.exec(res.stdout);
  if (!m) throw new Error('make-disk.sh printed no HOST_OFFSET');
  return Number(m[1]);
}

/**
 * The host ext4 filesystem inside a disk image, edited offline with e2fsprogs on
 * "disk.img?offset=N" (no mounts). Env edits go through the real grub-editenv on a copy that is
 * written back IN PLACE at the file's block, which is what GRUB's save_env and the agent do.
 */
export class HostFs {
  constructor(readonly disk: string, readonly offset: number, readonly scratch: string) {}
  get spec(): string {
    return `${this.disk}?offset=${this.offset}`;
  }
  async debugfs(cmd: string, write = false): Promise<string> {
    const res = await run('debugfs', [...(write ? ['-w'] : []), '-R', cmd, this.spec], { allowFailure: true });
    return res.stdout;
  }
  async readFile(p: string): Promise<Buffer | null> {
    const tmp = path.join(this.scratch, `dump-${process.pid}-${Date.now()}`);
    await this.debugfs(`dump ${p} ${tmp}`);
    try {
      return await fsp.readFile(tmp);
    } catch {
      return null;
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }
  private static readonly ENV_FILES = ['/boot/grub/grubenv', '/boot/grub/grubenv.bak'];

  /** Dumps both env copies into a fresh scratch dir. */
  private async dumpEnv(): Promise<string> {
    const dir = await fsp.mkdtemp(path.join(this.scratch, 'env-'));
    for (const f of HostFs.ENV_FILES) await this.debugfs(`dump ${f} ${path.join(dir, path.basename(f))}`);
    return dir;
  }

  /** The boot state as the agent reads it (src/boot/grub-bootloader.ts), from the disk. */
  async bootState(): Promise<BootState> {
    const dir = await this.dumpEnv();
    try {
      return await new GrubBootloader({ dir }).read();
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  async env(): Promise<Record<string, string>> {
    const st = await this.bootState();
    return { default_image: st.defaultImage ?? '', try_image: st.tryImage ?? '' };
  }

  /**
   * Changes the boot state with the agent's own code on copies of both env files, then writes
   * each back over the same block of the same inode (what the agent does on a mounted host).
   */
  async editEnv(change: (bl: GrubBootloader) => Promise<unknown>, opts: { tryClearedBy?: 'grub' | 'initramfs' } = {}): Promise<void> {
    const dir = await this.dumpEnv();
    try {
      await change(new GrubBootloader({ dir, ...opts }));
      for (const f of HostFs.ENV_FILES) await this.writeInPlace(f, await fsp.readFile(path.join(dir, path.basename(f))));
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  /** The raw bytes of both env copies, primary first. */
  async envBlocks(): Promise<[Buffer, Buffer]> {
    const [a, b] = await Promise.all(HostFs.ENV_FILES.map((f) => this.readFile(f)));
    if (!a || !b) throw new Error('an env copy is missing on the host fs');
    return [a, b];
  }

  /** Overwrites an existing file's bytes in place (same inode, same blocks); size must not change. */
  async writeInPlace(file: string, data: Buffer): Promise<void> {
    const size = Number(/Size:\s+(\d+)/.exec(await this.debugfs(`stat ${file}`))?.[1]);
    if (size !== data.length) throw new Error(`${file}: ${data.length} bytes to write in place over ${size}`);
    const bs = Number(/Block size:\s+(\d+)/.exec((await run('dumpe2fs', ['-h', this.spec], { allowFailure: true })).stdout)?.[1]);
    const fh = await fsp.open(this.disk, 'r+');
    try {
      for (let i = 0; i * bs < data.length; i++) {
        const blk = Number((await this.debugfs(`bmap ${file} ${i}`)).trim());
        if (!(blk > 0)) throw new Error(`debugfs bmap ${file} ${i} gave no block`);
        await fh.write(data, i * bs, Math.min(bs, data.length - i * bs), this.offset + blk * bs);
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    const back = await this.readFile(file);
    if (!back || !back.equals(data)) throw new Error(`${file}: write-back verification failed`);
  }

  /** Replaces (or removes, with src null) a file on the host fs. */
  async putFile(p: string, src: string | null): Promise<void> {
    await this.debugfs(`rm ${p}`, true);
    if (src) await this.debugfs(`write ${src} ${p}`, true);
    const fsck = await run('e2fsck', ['-fn', this.spec], { allowFailure: true });
    if (fsck.code !== 0) throw new Error('host fs inconsistent after a debugfs edit:\n' + fsck.stdout);
  }
  /**
   * True when the host fs was left with an un-checkpointed journal (needs_recovery): what GRUB
   * would read is then stale, and offline edits with debugfs would be undone by the replay.
   */
  async needsRecovery(): Promise<boolean> {
    const out = (await run('dumpe2fs', ['-h', this.spec], { allowFailure: true })).stdout;
    const features = /Filesystem features:\s+(.*)/.exec(out)?.[1] ?? '';
    return features.split(/\s+/).includes('needs_recovery');
  }

  async fsck(): Promise<{ code: number; out: string }> {
    const r = await run('e2fsck', ['-fn', this.spec], { allowFailure: true });
    return { code: r.code, out: r.stdout + r.stderr };
  }
}

const ANSI_ESCAPE = new RegExp(String.fromCharCode(27) + '\\[[0-9;?=]*[A-Za-z]', 'g');

export interface BootResult {
  /** QEMU's exit status (0 after a guest power-off), or null when the harness killed it. */
  code: number | null;
  timedOut: boolean;
  /** The serial line that showed the guest stuck (e.g. GRUB's interactive menu), if one did. */
  stuck: string | null;
  log: string;
  logFile: string;
}

/**
 * Boots `disk` under OVMF until the guest powers off. Guest reboots (panic=, reboot -f) are not
 * suppressed, so a failed trial, the reset and the fallback boot happen within one run.
 * Each serial line is stamped with seconds since QEMU started (for reading, never asserted on).
 */
export async function boot(opts: {
  disk: string; logFile: string; timeoutMs?: number; memMiB?: number; extra?: string[]; stuckOn?: RegExp[];
  /** Called with each serial line (ANSI-stripped, unstamped) as it arrives, e.g. for the demo's live narration. */
  onLine?: (line: string) => void;
}): Promise<BootResult> {
  // GRUB showing its menu means no entry booted; waiting for the timeout would only cost time
  const stuckOn = opts.stuckOn ?? [/Press enter to boot the selected OS/, /\(initramfs\)|can't access tty/];
  let stuck: string | null = null;
  const vars = opts.logFile.replace(/\.log$/, '') + '.ovmf-vars.fd';
  await fsp.copyFile(OVMF_VARS, vars);
  const args = ['-machine', 'q35', '-accel', 'tcg', '-m', String(opts.memMiB ?? 512), '-smp', '1',
    '-display', 'none', '-monitor', 'none', '-serial', 'stdio',
    '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`,
    '-drive', `if=pflash,format=raw,file=${vars}`,
    '-drive', `file=${opts.disk},format=raw,if=virtio`,
    '-device', 'virtio-rng-pci',
    ...(opts.extra ?? ['-nic', 'none'])];
  const out = createWriteStream(opts.logFile);
  out.write(`# qemu-system-x86_64 ${args.join(' ')}\n`);
  const t0 = Date.now();
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, opts.timeoutMs ?? 480_000);
  let pending = '';
  const stamp = (chunk: Buffer) => {
    // strip CRs and ANSI escapes (OVMF and GRUB draw with them)
    pending += chunk.toString('latin1').replace(/\r/g, '').replace(ANSI_ESCAPE, '');
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    const t = ((Date.now() - t0) / 1000).toFixed(3).padStart(8);
    for (const l of lines) {
      out.write(`[${t}] ${l}\n`);
      opts.onLine?.(l);
      if (!stuck && stuckOn.some((re) => re.test(l))) {
        stuck = l;
        child.kill('SIGKILL');
      }
    }
  };
  child.stdout.on('data', stamp);
  child.stderr.on('data', stamp);
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  clearTimeout(timer);
  if (pending) out.write(`[${((Date.now() - t0) / 1000).toFixed(3).padStart(8)}] ${pending}\n`);
  out.write(`# qemu exit status ${code}, wall ${((Date.now() - t0) / 1000).toFixed(1)} s${timedOut ? ' (killed: timeout)' : ''}${stuck ? ' (killed: stuck)' : ''}\n`);
  await new Promise<void>((resolve) => out.end(resolve));
  await fsp.rm(vars, { force: true });
  return { code, timedOut, stuck, log: readFileSync(opts.logFile, 'latin1'), logFile: opts.logFile };
}

/**
 * Asserts that the regexes match lines of the log in this order; returns a message naming the
 * first one that did not, or null.
 */
export function missingInOrder(log: string, patterns: RegExp[]): string | null {
  const lines = log.split('\n');
  let pos = 0;
  for (const re of patterns) {
    let found = -1;
    for (let i = pos; i < lines.length; i++) {
      if (re.test(lines[i])) {
        found = i;
        break;
      }
    }
    if (found < 0) return `no line matching ${re} after line ${pos + 1}`;
    pos = found + 1;
  }
  return null;
}

/** Counts lines matching re. */
export function countLines(log: string, re: RegExp): number {
  return log.split('\n').filter((l) => re.test(l)).length;
}

/**
 * Seconds from QEMU start to the boot milestones in a serial log, for reading (docs/boot.md);
 * never asserted on. Repeated milestones (a fallback boot) are listed each time.
 */
export function timeline(log: string): string {
  const marks: [RegExp, string][] = [
    [/BdsDxe: starting/, 'firmware->grub'],
    [/ibu: booting image (\S+)/, 'grub->kernel'],
    [/ibu-initramfs .* starting/, 'initramfs'],
    [/ibu-initramfs .* mounted /, 'image mounted'],
    [/IBU-E2E RUNNING/, 'image init'],
    [/Kernel panic|FATAL/, 'failure'],
    [/IBU-E2E POWEROFF/, 'poweroff'],
  ];
  const out: string[] = [];
  for (const line of log.split('\n')) {
    const t = /^\[\s*([\d.]+)\]/.exec(line);
    if (!t) continue;
    for (const [re, name] of marks) if (re.test(line)) out.push(`${name} ${Number(t[1]).toFixed(1)}s`);
  }
  const wall = /wall ([\d.]+) s/.exec(log);
  return out.join(', ') + (wall ? ` | wall ${wall[1]} s` : '');
}
