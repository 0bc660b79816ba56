/**
 * The e2e harness: builds real boot media (GPT disk, ESP with GRUB EFI, host ext4 holding image
 * files) and boots them in QEMU (TCG) under OVMF, capturing the guest's serial console into a
 * time-stamped log. Nothing here is mocked: real kernel (Debian's linux-image .deb), real GRUB,
 * real e2fsprogs. No top-level side effects: node --test may load this file on its own.
 */
import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import Database from 'better-sqlite3';
import { promises as fsp, existsSync, createWriteStream, readFileSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { GrubBootloader } from '../../src/boot/grub-bootloader.js';
import type { BootState } from '../../src/boot/bootloader.js';
import { compareVersions } from '../../src/version.js';
import { signed } from '../helpers/enroll.js';

import { repoRoot } from '../helpers/repo-root.js';

export { repoRoot };

export const HOST_UUID = '1e0f4b8a-3c2d-4e5f-8a9b-0c1d2e3f4a5b';
export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
/**
 * Kernel arguments the tests add: serial console, quiet kernel (panics still print), and
 * no_timer_check: on a loaded host TCG runs so slowly that the kernel's IO-APIC timer check
 * fails ("Kernel panic - not syncing: IO-APIC + timer doesn't work!"), seen here at load 14.
 */
export const TEST_CMDLINE = 'console=ttyS0,115200 quiet no_timer_check';
/** Boot attempts per image (IBU_BOOT_TRIES): 2 instead of the default 3 keeps the recovery runs short. */
export const TEST_BOOT_TRIES = 2;
/** The generator settings both grub.cfg and the EFI binary's built-in copy are made with. */
const GRUB_SETTINGS: GrubSettings = { IBU_CMDLINE: TEST_CMDLINE, IBU_BOOT_TRIES: String(TEST_BOOT_TRIES), IBU_RETRY_SECONDS: '3' };
/** assets/grub/10_ibu's settings (docs/boot.md); the appliance harness boots rw with its own command line. */
export type GrubSettings = Record<string, string>;

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

/** What every e2e boot needs, built under `work`: the kernel kit, the busybox initramfs, GRUB EFI. */
export async function bootMedia(work: string): Promise<{ kit: KernelKit; initrd: string; efi: string }> {
  const kit = await kernelKit();
  const initrd = path.join(work, 'initrd.img');
  await buildInitramfs(kit, initrd);
  const efi = path.join(work, 'BOOTX64.EFI');
  await buildEfi(efi);
  return { kit, initrd, efi };
}

export async function buildInitramfs(kit: KernelKit, out: string, extraModules: string[] = [], o: { verity?: boolean } = {}): Promise<void> {
  const args = [path.join(repoRoot(), 'assets/initramfs/build-initramfs.sh'), '--modules-dir', kit.modulesDir, '--e2fsck', kit.e2fsckStatic, '--out', out];
  if (extraModules.length) args.push('--extra-modules', extraModules.join(' '));
  if (o.verity) args.push('--verity');
  await run('bash', args);
}

export async function buildEfi(out: string, settings: GrubSettings = GRUB_SETTINGS): Promise<void> {
  await run('bash', [path.join(repoRoot(), 'assets/grub/make-efi.sh'), HOST_UUID, out], { env: { ...process.env, ...settings } });
}

/** A busybox root tree with the test /sbin/init; kernel and initrd unless `kernel: false`. */
export async function stageBusyboxRoot(
  dir: string,
  opts: { version: string; variant: string; kit: KernelKit; initrd: string; kernel?: boolean },
): Promise<void> {
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
  await run('bash', [
    path.join(repoRoot(), 'test/e2e/stage-node-root.sh'),
    '--out',
    dir,
    '--version',
    opts.version,
    '--vmlinuz',
    opts.kit.vmlinuz,
    '--initrd',
    opts.initrd,
    '--modules-dir',
    opts.kit.modulesDir,
    '--e2fsck',
    opts.kit.e2fsckStatic,
  ]);
}

/**
 * QEMU user networking for a guest that may reach exactly one host service: restrict=on cuts
 * every outside route, and one guestfwd maps 10.0.2.100:80 in the guest to 127.0.0.1:port on the
 * host (a `busybox nc` per connection; the chardev form serves one connection only).
 */
export function guestNetArgs(hostPort: number, more: Record<string, number> = {}): string[] {
  // `more`: further guest addresses (10.0.2.x) forwarded to other host ports, e.g. a second server
  const fwd = [['10.0.2.100', hostPort] as const, ...Object.entries(more)].map(([ip, p]) => `,guestfwd=tcp:${ip}:80-cmd:busybox nc 127.0.0.1 ${p}`);
  return ['-device', 'virtio-net-pci,netdev=n0', '-netdev', `user,id=n0,restrict=on${fwd.join('')}`];
}

/**
 * Makes an image file from a root tree with the product's builder, `ibu image build` (so the
 * e2e images are built the way releases are). IBU_E2E_MKE2FS=1 uses plain mke2fs -d instead,
 * which is what the builder wraps (for runs before dist/ is built).
 */
/**
 * One busybox test image at `out`: stageBusyboxRoot in `stage`, then `change` (a damage to the
 * staged tree, if any), then buildImage. The boot-chain and boot-recovery variants are made here.
 */
export async function buildBusyboxImage(
  stage: string,
  out: string,
  o: { version: string; variant?: string; kit: KernelKit; initrd: string; kernel?: boolean; sizeMiB: number; change?: (stage: string) => Promise<void> },
): Promise<string> {
  await stageBusyboxRoot(stage, { version: o.version, variant: o.variant ?? 'good', kit: o.kit, initrd: o.initrd, kernel: o.kernel });
  await o.change?.(stage);
  await buildImage(stage, out, o.version, o.sizeMiB);
  return out;
}

export async function buildImage(root: string, out: string, version: string, sizeMiB: number): Promise<void> {
  const cli = path.join(repoRoot(), 'dist/src/cli/ibu.js');
  if (process.env.IBU_E2E_MKE2FS !== '1') {
    if (!existsSync(cli)) throw new Error(`${cli} is missing: run npm run build (or set IBU_E2E_MKE2FS=1)`);
    const noKernel = existsSync(path.join(root, 'vmlinuz')) ? [] : ['--no-kernel'];
    await run(process.execPath, [
      path.join(repoRoot(), 'bin/ibu'),
      'image',
      'build',
      '--root',
      root,
      '--version',
      version,
      '--size',
      `${sizeMiB}M`,
      '--out',
      out,
      ...noKernel,
    ]);
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
export async function writeGrubCfg(hostTree: string, settings: GrubSettings = GRUB_SETTINGS): Promise<void> {
  const res = await run('sh', [path.join(repoRoot(), 'assets/grub/10_ibu')], {
    env: { ...process.env, IBU_HOST: hostTree, IBU_HOST_UUID: HOST_UUID, ...settings },
  });
  await fsp.mkdir(path.join(hostTree, 'boot/grub'), { recursive: true });
  await fsp.writeFile(path.join(hostTree, 'boot/grub/grub.cfg'), res.stdout);
}

/** Both env copies (grubenv, grubenv.bak) written by the agent's own code, committing `version`. */
export async function createGrubenv(hostTree: string, version: string): Promise<void> {
  // ibu_images as the agent writes it: the installed versions, newest first.
  const listImages = async (): Promise<string[]> =>
    (await fsp.readdir(path.join(hostTree, 'images')))
      .flatMap((n) => (n.endsWith('.img') ? [n.slice(0, -4)] : []))
      .sort(compareVersions)
      .reverse();
  await new GrubBootloader({ dir: path.join(hostTree, 'boot/grub'), listImages }).init(version);
}

/** Builds the GPT disk; returns the host partition's byte offset. */
export async function makeDisk(opts: { efi: string; hostTree: string; hostMiB: number; out: string }): Promise<number> {
  const res = await run('bash', [
    path.join(repoRoot(), 'test/e2e/make-disk.sh'),
    '--efi',
    opts.efi,
    '--host-tree',
    opts.hostTree,
    '--host-uuid',
    HOST_UUID,
    '--host-mib',
    String(opts.hostMiB),
    '--out',
    opts.out,
  ]);
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
  constructor(
    readonly disk: string,
    readonly offset: number,
    readonly scratch: string,
  ) {}
  get spec(): string {
    return `${this.disk}?offset=${this.offset}`;
  }
  async debugfs(cmd: string, write = false): Promise<string> {
    const res = await run('debugfs', [...(write ? ['-w'] : []), '-R', cmd, this.spec], { allowFailure: true });
    return res.stdout;
  }
  /**
   * One file as GRUB reads it: home locations, no journal replay, and (`debugfs -n`) no metadata
   * checksum verification, which GRUB does not do either: after a power cut the journal may have
   * checkpointed a group descriptor or bitmap without its partner, and plain debugfs then refuses
   * what GRUB reads fine. Null when the file does not exist; any other failure names debugfs's
   * own words (a read that returned nothing once made "an env copy is missing" with no cause).
   */
  async readFile(p: string): Promise<Buffer | null> {
    // Unique per call: two reads in the same millisecond (envBlocks reads both copies at once) must not share a file.
    const tmp = path.join(this.scratch, `dump-${process.pid}-${randomBytes(6).toString('hex')}`);
    const res = await run('debugfs', ['-n', '-R', `dump ${p} ${tmp}`, this.spec], { allowFailure: true });
    try {
      return await fsp.readFile(tmp);
    } catch {
      if (/File not found by ext2_lookup/.test(res.stderr)) return null;
      throw new Error(`debugfs could not read ${p} from the host fs (exit ${res.code}): ${res.stderr.trim().slice(-1000)}`);
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  }
  private static readonly ENV_FILES = ['/boot/grub/grubenv', '/boot/grub/grubenv.bak'];

  /** Dumps both env copies into a fresh scratch dir. */
  private async dumpEnv(): Promise<string> {
    const dir = await fsp.mkdtemp(path.join(this.scratch, 'env-'));
    for (const f of HostFs.ENV_FILES) {
      const data = await this.readFile(f);
      if (data) await fsp.writeFile(path.join(dir, path.basename(f)), data);
    }
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

  /** default_image, try_image and GRUB's boot counting (ibu_attempt, ibu_tally, ibu_bad) as the agent reads them. */
  async env(): Promise<Record<string, string>> {
    const st = await this.bootState();
    return {
      default_image: st.defaultImage ?? '',
      try_image: st.tryImage ?? '',
      ibu_attempt: st.attempt?.image ?? '',
      ibu_tally: 'x'.repeat(st.attempt?.boots ?? 0),
      ibu_bad: st.bad.join(' '),
    };
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

  /**
   * What statfs() will report as f_bavail once the kernel mounts this fs, which is what the
   * agent's disk policy counts: free blocks minus the root reserve minus the clusters ext4 holds
   * back at mount (s_resv_clusters: 2 % of the blocks, at most 4096; fs/ext4/super.c).
   */
  async availBytes(): Promise<{ avail: number; blockSize: number }> {
    const out = (await run('dumpe2fs', ['-h', this.spec], { allowFailure: true })).stdout;
    const num = (re: RegExp): number => Number(re.exec(out)?.[1]);
    const bs = num(/Block size:\s+(\d+)/);
    const blocks = num(/Block count:\s+(\d+)/);
    const avail = num(/Free blocks:\s+(\d+)/) - num(/Reserved block count:\s+(\d+)/) - Math.min(Math.floor(blocks / 50), 4096);
    if (!(bs > 0) || !Number.isFinite(avail)) throw new Error('dumpe2fs printed no block counts:\n' + out);
    return { avail: avail * bs, blockSize: bs };
  }

  /** A new file of `bytes` allocated blocks (unwritten extents, size 0): fills the disk without writing it. */
  async fallocate(p: string, bytes: number): Promise<void> {
    const { blockSize } = await this.availBytes();
    const empty = path.join(this.scratch, `empty-${process.pid}`);
    await fsp.writeFile(empty, '');
    try {
      await this.debugfs(`write ${empty} ${p}`, true);
    } finally {
      await fsp.rm(empty, { force: true });
    }
    const blocks = Math.ceil(bytes / blockSize);
    if (blocks > 0) await this.debugfs(`fallocate ${p} 0 ${blocks - 1}`, true);
    const fsck = await this.fsck();
    if (fsck.code !== 0) throw new Error('host fs inconsistent after fallocate:\n' + fsck.out);
  }

  /**
   * A copy of the host fs with its journal replayed (e2fsck -fy on the copy), for reading what
   * the guest had made durable when the power was cut; the disk itself stays as the cut left it
   * (the next boot's kernel replays it, GRUB reads it as is).
   */
  async recoveredCopy(): Promise<HostFs> {
    // the partition alone: e2fsck cannot re-open "file?offset=N" after replaying a journal
    const copy = path.join(this.scratch, `recovered-${path.basename(this.disk)}`);
    await run('dd', [`if=${this.disk}`, `of=${copy}`, 'bs=1M', `skip=${this.offset}`, 'iflag=skip_bytes', 'conv=sparse', 'status=none']);
    const r = await run('e2fsck', ['-fy', copy], { allowFailure: true });
    // 0: clean, 1: errors corrected (the journal replay counts); more is damage
    if (r.code > 1) throw new Error(`e2fsck -fy on a copy of ${this.disk} exited ${r.code}:\n${r.stdout}${r.stderr}`);
    return new HostFs(copy, 0, this.scratch);
  }
}

const ANSI_ESCAPE = new RegExp(String.fromCharCode(27) + '\\[[0-9;?=]*[A-Za-z]', 'g');

export interface BootResult {
  /** QEMU's exit status (0 after a guest power-off), or null when the harness killed it. */
  code: number | null;
  timedOut: boolean;
  /** The serial line that showed the guest stuck (e.g. GRUB's interactive menu), if one did. */
  stuck: string | null;
  /** The serial line on which the harness cut the power (opts.killOn), if it did. */
  killedOn: string | null;
  /** How often the harness power-cycled a GRUB that hung (opts.powerCycleOnGrubHangMs). */
  powerCycles: number;
  log: string;
  logFile: string;
}

/**
 * Boots `disk` under OVMF until the guest powers off. Guest reboots (panic=, reboot -f) are not
 * suppressed, so a failed trial, the reset and the fallback boot happen within one run.
 * Each serial line is stamped with seconds since QEMU started (for reading, never asserted on).
 */
export async function boot(opts: {
  disk: string;
  logFile: string;
  timeoutMs?: number;
  memMiB?: number;
  extra?: string[];
  stuckOn?: RegExp[];
  /** Called with each serial line (ANSI-stripped, unstamped) as it arrives, e.g. for the demo's live narration. */
  onLine?: (line: string) => void;
  /** Cut the power (SIGKILL QEMU: no guest shutdown, no flush of the guest's caches) on the first line matching this. */
  killOn?: RegExp;
  /** 'uefi' (OVMF, the default) or 'bios' (QEMU's SeaBIOS). */
  firmware?: 'uefi' | 'bios';
  /**
   * Press the power button (ACPI, QEMU's system_powerdown) on the first line matching this: a
   * systemd guest shuts down cleanly (logind) and QEMU exits 0. Guests without ACPI handling ignore it.
   */
  powerdownOn?: RegExp;
  /** Kills QEMU when aborted (a test or the demo giving up). */
  signal?: AbortSignal;
  /** Writes go to a temporary qcow2 overlay QEMU throws away at exit (`snapshot=on`): every boot starts from the same disk (bench/appliance-switch.ts). */
  snapshot?: boolean;
  /**
   * When GRUB prints nothing for this long after "Welcome to GRUB!", the harness power-cycles the
   * guest: QEMU is killed and started again on the same disk and NVRAM (one log, one line stream).
   * For a warm reset that hangs in OVMF/GRUB under TCG (test/e2e/appliance-verity.test.ts, docs/boot.md);
   * every such cycle is logged and counted in BootResult.powerCycles.
   */
  powerCycleOnGrubHangMs?: number;
  /**
   * Every guest reset is a power cycle: QEMU runs with `-no-reboot`, so a reset (reboot, panic=,
   * GRUB's reboot, the watchdog) ends it, and the harness starts it again on the same disk and
   * NVRAM, counted in BootResult.powerCycles. For a guest whose warm resets hang in OVMF under TCG
   * (test/e2e/appliance-verity.test.ts, docs/boot.md).
   */
  powerCycle?: boolean;
}): Promise<BootResult> {
  // GRUB showing its menu means no entry booted; waiting for the timeout would only cost time
  const stuckOn = opts.stuckOn ?? [/Press enter to boot the selected OS/, /\(initramfs\)|can't access tty/];
  let stuck: string | null = null;
  let killedOn: string | null = null;
  const bios = opts.firmware === 'bios';
  const vars = opts.logFile.replace(/\.log$/, '') + '.ovmf-vars.fd';
  const monitor = opts.logFile.replace(/\.log$/, '') + '.monitor';
  let poweredDown = false;
  if (!bios) await fsp.copyFile(OVMF_VARS, vars);
  const args = [
    '-machine',
    'q35',
    '-accel',
    'tcg',
    '-m',
    String(opts.memMiB ?? 512),
    '-smp',
    '1',
    '-display',
    'none',
    '-monitor',
    opts.powerdownOn ? `unix:${monitor},server=on,wait=off` : 'none',
    '-serial',
    'stdio',
    ...(bios ? [] : ['-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`, '-drive', `if=pflash,format=raw,file=${vars}`]),
    '-drive',
    `file=${opts.disk},format=raw,if=virtio${opts.snapshot ? ',snapshot=on' : ''}`,
    '-device',
    'virtio-rng-pci',
    ...(opts.extra ?? ['-nic', 'none']),
  ];
  const out = createWriteStream(opts.logFile);
  out.write(`# qemu-system-x86_64 ${args.join(' ')}\n`);
  const t0 = Date.now();
  let child: ReturnType<typeof spawn> | null = null;
  let aborted = false;
  opts.signal?.addEventListener(
    'abort',
    () => {
      aborted = true;
      child?.kill('SIGKILL');
    },
    { once: true },
  );
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child?.kill('SIGKILL');
  }, opts.timeoutMs ?? 480_000);
  let pending = '';
  if (opts.powerCycle) args.push('-no-reboot');
  let grubWait: NodeJS.Timeout | undefined;
  let hung = false;
  let powerCycles = 0;
  // with -no-reboot QEMU exits 0 at a reset and at a power-off alike: the kernel's line tells them apart
  let powerOffSeen = false;
  const stamp = (chunk: Buffer) => {
    // strip CRs and ANSI escapes (OVMF and GRUB draw with them)
    pending += chunk.toString('latin1').replace(/\r/g, '').replace(ANSI_ESCAPE, '');
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    const t = ((Date.now() - t0) / 1000).toFixed(3).padStart(8);
    for (const l of lines) {
      out.write(`[${t}] ${l}\n`);
      opts.onLine?.(l);
      if (/reboot: Power down/.test(l)) powerOffSeen = true;
      if (opts.powerCycleOnGrubHangMs && l.trim() !== '') {
        clearTimeout(grubWait);
        if (/Welcome to GRUB!/.test(l)) {
          grubWait = setTimeout(() => {
            hung = true;
            child?.kill('SIGKILL');
          }, opts.powerCycleOnGrubHangMs);
        }
      }
      if (!killedOn && !stuck && opts.killOn?.test(l)) {
        killedOn = l;
        child?.kill('SIGKILL');
      }
      if (!poweredDown && opts.powerdownOn?.test(l)) {
        poweredDown = true;
        const sock = net.connect(monitor, () => sock.end('system_powerdown\n'));
        sock.on('error', () => child?.kill('SIGKILL'));
      }
      if (!stuck && stuckOn.some((re) => re.test(l))) {
        stuck = l;
        child?.kill('SIGKILL');
      }
    }
  };
  let code: number | null;
  for (;;) {
    const c = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout.on('data', stamp);
    c.stderr.on('data', stamp);
    code = await new Promise<number | null>((resolve) => c.on('close', (x) => resolve(x)));
    clearTimeout(grubWait);
    if (aborted || timedOut || stuck || killedOn) break;
    let why: string;
    if (hung) why = `GRUB printed nothing for ${opts.powerCycleOnGrubHangMs! / 1000} s after "Welcome to GRUB!": QEMU killed`;
    else if (opts.powerCycle && code === 0 && !powerOffSeen && !poweredDown) why = 'the guest reset (-no-reboot: QEMU exited)';
    else break;
    hung = false;
    powerCycles++;
    if (pending) out.write(`[${((Date.now() - t0) / 1000).toFixed(3).padStart(8)}] ${pending}\n`);
    pending = '';
    out.write(`# power cycle ${powerCycles}: ${why}; QEMU starts again on the same disk and NVRAM\n`);
  }
  clearTimeout(timer);
  if (pending) out.write(`[${((Date.now() - t0) / 1000).toFixed(3).padStart(8)}] ${pending}\n`);
  out.write(
    `# qemu exit status ${code}, wall ${((Date.now() - t0) / 1000).toFixed(1)} s${timedOut ? ' (killed: timeout)' : ''}${stuck ? ' (killed: stuck)' : ''}${killedOn ? ' (killed: power cut)' : ''}\n`,
  );
  await new Promise<void>((resolve) => out.end(resolve));
  await fsp.rm(vars, { force: true });
  await fsp.rm(monitor, { force: true });
  return { code, timedOut, stuck, killedOn, powerCycles, log: readFileSync(opts.logFile, 'latin1'), logFile: opts.logFile };
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

// ---- the fleet story: releases, a server, devices (test/e2e/agent-*.test.ts) -----------------

export const FLEET_ADMIN = 'e2e-admin-token';
export const FLEET_SECRET = 'e2e-enrollment-secret';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

/** The product's CLI (bin/ibu on the built dist/). */
export function ibu(...args: string[]) {
  return run(process.execPath, [path.join(repoRoot(), 'bin/ibu'), ...args]);
}

export interface FleetBuild {
  work: string;
  efi: string;
  /** Release images: 1.0, and 2.0 built with --previous 1.0 (same userland, a new version file and one new file). */
  img1: string;
  img2: string;
  keys: string;
  /** The store both releases were published into (channel stable). */
  store: string;
}

/** Boot media and two releases with Node and the ibu project, published into a store under `work`. */
export async function buildFleetReleases(work: string): Promise<FleetBuild> {
  const { kit, initrd, efi } = await bootMedia(work);
  const stage = path.join(work, 'stage');
  const img1 = path.join(work, '1.0.img');
  const img2 = path.join(work, '2.0.img');
  await stageNodeRoot(stage, { version: '1.0', kit, initrd });
  await buildImage(stage, img1, '1.0', 256);
  await fsp.writeFile(path.join(stage, 'etc/ibu-e2e/version'), '2.0\n');
  await fsp.writeFile(path.join(stage, 'etc/ibu-e2e/release-notes'), 'release 2.0: a new file\n');
  await ibu('image', 'build', '--root', stage, '--version', '2.0', '--size', '256M', '--previous', img1, '--out', img2);
  await fsp.rm(stage, { recursive: true, force: true });
  const keys = path.join(work, 'keys');
  await ibu('keys', 'generate', '--out', keys);
  const store = path.join(work, 'store');
  for (const [img, v] of [
    [img1, '1.0'],
    [img2, '2.0'],
  ]) {
    await ibu('release', 'publish', '--image', img, '--version', v, '--store', store, '--key', path.join(keys, 'signing.key'), '--channel', 'stable');
  }
  return { work, efi, img1, img2, keys, store };
}

/** `ibu serve` on 127.0.0.1 (a free port) over a data dir, its pino log in `logFile`; and what the tests ask it. */
export class FleetServer {
  private child: ChildProcess | null = null;
  port = 0;
  constructor(
    readonly data: string,
    readonly logFile: string,
    /** More `ibu serve` flags. */
    private readonly flags: string[] = [],
  ) {}
  get base(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.port = await freePort();
    const logFd = await fsp.open(this.logFile, 'w');
    this.child = spawn(
      process.execPath,
      [
        path.join(repoRoot(), 'bin/ibu'),
        'serve',
        '--data',
        this.data,
        '--listen',
        `127.0.0.1:${this.port}`,
        '--admin-token',
        FLEET_ADMIN,
        '--precompute',
        '0',
        ...this.flags,
      ],
      {
        env: { ...process.env, IBU_ENROLLMENT_SECRET: FLEET_SECRET },
        stdio: ['ignore', logFd.fd, logFd.fd],
      },
    );
    await logFd.close();
    for (let i = 0; ; i++) {
      const ok = await fetch(`${this.base}/v1/channels/stable/releases`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) return this;
      if (i > 150 || this.child.exitCode !== null) throw new Error('ibu serve did not come up:\n' + (await fsp.readFile(this.logFile, 'utf8')).slice(-2000));
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async stop(): Promise<void> {
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) {
      c.kill('SIGTERM');
      await new Promise((r) => c.once('close', r));
    }
  }

  async api(method: string, route: string, body?: unknown, token?: string): Promise<{ status: number; json: unknown }> {
    const res = await fetch(`${this.base}${route}`, {
      method,
      headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json: unknown = text;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: res.status, json };
  }

  /** Enrolls a device with the shared secret; returns its token. */
  async enroll(deviceId: string): Promise<string> {
    const r = await this.api('POST', '/v1/devices/enroll', signed({ deviceId, enrollmentSecret: FLEET_SECRET }));
    if (r.status !== 200) throw new Error(`enroll ${deviceId}: HTTP ${r.status} ${JSON.stringify(r.json)}`);
    return (r.json as { token: string }).token;
  }

  /** The device as the fleet API shows it (the fields the scenarios assert on). */
  async deviceRecord(name: string) {
    const dev = await this.api('GET', `/v1/admin/fleet/devices/${name}`, undefined, FLEET_ADMIN);
    if (dev.status !== 200) throw new Error(`GET device ${name}: HTTP ${dev.status}`);
    const d = dev.json as { version: string; committedVersion: string; state: string; trial: boolean; lastErrorCode: string | null };
    return { version: d.version, committedVersion: d.committedVersion, state: d.state, trial: d.trial, lastErrorCode: d.lastErrorCode };
  }

  /** Polls the device's record every 3 s until `ok` holds; throws with the last record after timeoutMs. */
  async waitForRecord(name: string, ok: (r: Awaited<ReturnType<FleetServer['deviceRecord']>>) => boolean, timeoutMs: number) {
    const t0 = Date.now();
    for (;;) {
      const r = await this.deviceRecord(name);
      if (ok(r)) return r;
      if (Date.now() - t0 > timeoutMs) throw new Error(`server record of ${name} still ${JSON.stringify(r)}`);
      await new Promise((res) => setTimeout(res, 3000));
    }
  }

  /** The device's events as the server stored them (the fleet's own SQLite file: the admin API lists none). */
  events(name: string): { type: string; from: string; to: string; errorCode: string | null }[] {
    return this.eventsWithMethod(name).map(({ type, from, to, errorCode }) => ({ type, from, to, errorCode }));
  }

  /** The same with how the device entered the trial (issue #18: reboot, kexec, soft-reboot; null when it did not say). */
  eventsWithMethod(name: string): { type: string; from: string; to: string; errorCode: string | null; method: string | null }[] {
    const db = new Database(path.join(this.data, 'fleet.sqlite'), { readonly: true });
    try {
      return db
        .prepare('SELECT type, from_version AS "from", to_version AS "to", error_code AS "errorCode", method FROM events WHERE device_id = ? ORDER BY id')
        .all(name) as never;
    } finally {
      db.close();
    }
  }

  /** The size of the built delta from -> to (HEAD; null while it is being built); `query`: the variant a device asked for (`?encoders=…`). */
  async deltaSize(from: string, to: string, query = ''): Promise<number | null> {
    const res = await fetch(`${this.base}/v1/deltas/${from}/${to}${query}`, { method: 'HEAD' });
    return res.status === 200 ? Number(res.headers.get('content-length')) : null;
  }

  /** Status codes the server answered for a URL, in order (from its pino request log). */
  async statusesFor(url: string): Promise<number[]> {
    const urls = new Map<string, string>();
    const out: number[] = [];
    for (const line of (await fsp.readFile(this.logFile, 'utf8')).split('\n')) {
      let e: { reqId?: string; req?: { url?: string }; res?: { statusCode?: number } };
      try {
        e = JSON.parse(line);
      } catch {
        continue;
      }
      // By path: a device's delta request carries ?encoders=.
      if (e.reqId && e.req?.url) urls.set(e.reqId, e.req.url.split('?')[0]!);
      if (e.reqId && e.res?.statusCode !== undefined && urls.get(e.reqId) === url) out.push(e.res.statusCode);
    }
    return out;
  }
}

export interface DeviceSpec {
  name: string;
  /** The scenario script the image's init runs (test/e2e/node-init.sh); $C is upgradectl with the config. */
  runSh: string;
  health: unknown[];
  hostMiB?: number;
  /** More images on the host fs besides 1.0 (version -> image file to copy). */
  extraImages?: Record<string, string>;
  /** Agent config keys merged over the defaults below (e.g. `reboot` for the switch methods). */
  agentConfig?: Record<string, unknown>;
  /** Further agent configs the script may use: /host/ibu-e2e/<file> -> server base URL as the guest sees it and its token. */
  extraConfigs?: Record<string, { url: string; token: string }>;
}

/**
 * A device disk with 1.0 installed and committed, enrolled as `spec.name` on `server`; the agent
 * config at /host/ibu-e2e/agent.json talks to http://10.0.2.100 (guestNetArgs).
 */
export async function makeFleetDevice(b: FleetBuild, server: FleetServer, spec: DeviceSpec): Promise<{ disk: string; host: HostFs }> {
  const token = await server.enroll(spec.name);
  const hostTree = path.join(b.work, `host-${spec.name}`);
  await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
  await fsp.copyFile(b.img1, path.join(hostTree, 'images/1.0.img'));
  for (const [v, img] of Object.entries(spec.extraImages ?? {})) await fsp.copyFile(img, path.join(hostTree, `images/${v}.img`));
  await fsp.mkdir(path.join(hostTree, 'ibu-e2e/keyring'), { recursive: true });
  await fsp.copyFile(path.join(b.keys, 'signing.pub'), path.join(hostTree, 'ibu-e2e/keyring/signing.pub'));
  const config = (url: string, tok: string) =>
    JSON.stringify(
      {
        server: { url, deviceId: spec.name, token: tok },
        channel: 'stable',
        keyring: '/host/ibu-e2e/keyring',
        checkpoint: 'fsfreeze',
        reboot: { command: ['reboot', '-f'], forceCommand: ['reboot', '-f'], forceAfterSeconds: 0, sysrqAfterSeconds: 0 },
        download: { deltaWaitSeconds: 600, maxRetryAfterSeconds: 5 },
        health: { deadlineSeconds: 30, checks: spec.health },
        pollSeconds: 2,
        ...spec.agentConfig,
      },
      null,
      2,
    );
  await fsp.writeFile(path.join(hostTree, 'ibu-e2e/agent.json'), config('http://10.0.2.100', token));
  for (const [file, c] of Object.entries(spec.extraConfigs ?? {})) await fsp.writeFile(path.join(hostTree, 'ibu-e2e', file), config(c.url, c.token));
  await fsp.writeFile(path.join(hostTree, 'ibu-e2e/run.sh'), 'C="node /opt/ibu/bin/upgradectl --config /host/ibu-e2e/agent.json"\n' + spec.runSh);
  await writeGrubCfg(hostTree);
  await createGrubenv(hostTree, '1.0');
  const disk = path.join(b.work, `disk-${spec.name}.img`);
  const offset = await makeDisk({ efi: b.efi, hostTree, hostMiB: spec.hostMiB ?? 1024, out: disk });
  await fsp.rm(hostTree, { recursive: true, force: true });
  return { disk, host: new HostFs(disk, offset, b.work) };
}
