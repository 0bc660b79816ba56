/**
 * The real appliance for the e2e scenarios and the demo: the example product
 * (examples/appliance: Debian 13, systemd, Debian's kernel and initramfs-tools initrd, openssh,
 * the ibu agent from its .deb, the vendor's acme-agent service from a .deb made here) built by
 * `ibu build` as four releases, each --previous the one before:
 *   1.0  acme-agent 1.0, the kernel of trixie's point release (an older ABI than the lock's)
 *   2.0  acme-agent 1.1, the lock's kernel from trixie-security: a new kernel ABI, and a delta
 *        of about a hundred MB (the kernel's modules and the initrd), big enough to cut mid-transfer
 *   3.0  acme-agent 1.2, broken    (its service fails to start: must roll back by itself)
 *   4.0  acme-agent 1.3            (2.0's kernel and initrd: the pair for soft-reboot)
 * Built releases are cached under /var/cache/ibu-e2e/appliance/<key>, the key a hash of their
 * inputs (the locks, the vendor .debs, the spec directory, ibu's build code and boot assets), so
 * the tests and the demo share them and a changed input rebuilds. A cold cache builds them
 * (the lock resolves against deb.debian.org once; the pool in /var/cache/ibu-build is shared
 * with test/build/appliance-build.test.ts).
 * No top-level side effects: node --test may load this file on its own.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { promises as fsp, existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { compareDebianVersions, parseLock, serializeLock, type ProductLock } from '../../src/build/lock-file.js';
import { PackagePool, poolDir } from '../../src/build/package-pool.js';
import { run } from '../../src/util/exec.js';
import { sha256File } from '../../src/util/sha256-file.js';
import { buildIbuDeviceDeb } from '../helpers/ibu-device-deb.js';
import { buildEfi, createGrubenv, makeDisk, writeGrubCfg, HostFs, repoRoot, ibu, type GrubSettings } from './harness.js';

export const APPLIANCE_CACHE = process.env.IBU_APPLIANCE_CACHE ?? '/var/cache/ibu-e2e/appliance';

/** The releases and the acme-agent version (and breakage) each carries. */
export const APPLIANCE_RELEASES = [
  { version: '1.0', acme: '1.0', broken: false, olderKernel: true },
  { version: '2.0', acme: '1.1', broken: false, olderKernel: false },
  { version: '3.0', acme: '1.2', broken: true, olderKernel: false },
  { version: '4.0', acme: '1.3', broken: false, olderKernel: false },
] as const;
export type ApplianceVersion = (typeof APPLIANCE_RELEASES)[number]['version'];

/**
 * Kernel arguments of the appliance boots: the serial console and the journal forwarded to it
 * (systemd's "Reached target" lines are the milestones the tests read; the agent's and the vendor
 * service's lines come with them), no_timer_check (see TEST_CMDLINE in harness.ts).
 */
export const APPLIANCE_CMDLINE = 'console=ttyS0,115200 no_timer_check systemd.journald.forward_to_console=1';
/** The image is the device's root, written by the device (machine-id, SSH keys, accounts): rw. */
export const APPLIANCE_GRUB: GrubSettings = { IBU_CMDLINE: APPLIANCE_CMDLINE, IBU_ROOT_MODE: 'rw', IBU_BOOT_TRIES: '2', IBU_RETRY_SECONDS: '3' };

export interface Appliance {
  /** version -> image file in the cache (read-only for callers: copy before booting). */
  images: Record<ApplianceVersion, string>;
  dir: string;
  /** Whether this call built them (false: served from the cache). */
  built: boolean;
}

const sha = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex');

/** Every file under dir, sorted, as "relpath mode sha256" lines: a directory's content for a cache key. */
function treeDigest(dir: string, skip: string[] = []): string {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const n of readdirSync(d).sort()) {
      const p = path.join(d, n);
      if (skip.includes(path.relative(dir, p))) continue;
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else out.push(`${path.relative(dir, p)} ${st.mode.toString(8)} ${sha(readFileSync(p))}`);
    }
  };
  if (existsSync(dir)) walk(dir);
  return sha(out.join('\n'));
}

/** The vendor packages of one release: acme-agent (made by the example's script) and ibu-device. */
async function vendorDebs(dir: string, acme: string, broken: boolean, specDir: string, ibuDevice: string): Promise<string[]> {
  await fsp.mkdir(dir, { recursive: true });
  execFileSync(path.join(specDir, 'make-acme-agent.sh'), [acme, dir, ...(broken ? ['broken'] : [])]);
  const dest = path.join(dir, path.basename(ibuDevice));
  await fsp.copyFile(ibuDevice, dest);
  return [path.join(dir, `acme-agent_${acme}_all.deb`), dest];
}

/** `Package`, `Version`, `Depends` of a .deb: what decides the resolution (not its bytes). */
function debControl(deb: string): { name: string; version: string; depends: string } {
  const f = (field: string): string => execFileSync('dpkg-deb', ['-f', deb, field]).toString().trim();
  return { name: f('Package'), version: f('Version'), depends: f('Depends') };
}

/**
 * The lock of release 1.0: resolved once per spec and vendor dependency set (kept in the cache;
 * IBU_TEST_RELOCK=1 resolves anew), then the vendor packages' own entries set to the .debs at hand.
 */
async function releaseLock(work: string, spec: string, vendor: string[], log: (m: string) => void): Promise<ProductLock> {
  const controls = vendor.map(debControl);
  const key = sha(readFileSync(spec, 'utf8') + JSON.stringify(controls.map((c) => [c.name, c.depends])));
  const cached = path.join(APPLIANCE_CACHE, `lock-${key.slice(0, 16)}.lock`);
  let lock: ProductLock;
  if (existsSync(cached) && process.env.IBU_TEST_RELOCK !== '1') {
    lock = parseLock(readFileSync(cached, 'utf8'));
  } else {
    const out = path.join(work, 'product.lock');
    log(`resolving the appliance's lock against the archive (ibu build lock)`);
    const r = await ibu('build', 'lock', '--spec', spec, '--out', out);
    log(r.stderr.trim().split('\n').slice(-2).join(' '));
    lock = parseLock(readFileSync(out, 'utf8'));
    await fsp.mkdir(APPLIANCE_CACHE, { recursive: true });
    await fsp.writeFile(`${cached}.tmp`, serializeLock(lock));
    await fsp.rename(`${cached}.tmp`, cached);
  }
  return withVendor(lock, vendor);
}

interface DebEntry {
  name: string;
  version: string;
  filename: string;
  size: number;
  sha256: string;
}

/** The plain amd64 kernels (`linux-image-<abi>-amd64`) and their metapackage (`linux-image-amd64`) in trixie's main suite. */
async function trixieKernels(uri: string): Promise<DebEntry[]> {
  const res = await fetch(`${uri}/dists/trixie/main/binary-amd64/Packages.xz`);
  if (!res.ok) throw new Error(`trixie's Packages index: HTTP ${res.status}`);
  const text = execFileSync('xz', ['-dc'], { input: Buffer.from(await res.arrayBuffer()), maxBuffer: 1 << 30 }).toString();
  const out: DebEntry[] = [];
  for (const stanza of text.split('\n\n')) {
    const f = (k: string): string => new RegExp(`^${k}: (.*)$`, 'm').exec(stanza)?.[1] ?? '';
    if (/^linux-image-(\d[^ ]*\+deb13-)?amd64$/.test(f('Package')))
      out.push({ name: f('Package'), version: f('Version'), filename: f('Filename'), size: Number(f('Size')), sha256: f('SHA256') });
  }
  return out;
}

/**
 * The lock with the kernel of trixie's point release in place of the lock's own (from
 * trixie-security): the newest plain amd64 kernel in trixie main older than the locked one, so the
 * next release brings a new kernel ABI (a new package name, as Debian 13 names its kernels). The
 * choice is kept in the cache beside the lock, so the same lock always gets the same kernel.
 */
async function withOlderKernel(lock: ProductLock, log: (m: string) => void): Promise<ProductLock> {
  const meta = lock.packages.find((p) => p.name === 'linux-image-amd64');
  const image = lock.packages.find((p) => /^linux-image-\d.*-amd64$/.test(p.name));
  const main = lock.archives.find((a) => a.codename === 'trixie')?.uri;
  if (!meta || !image || !main) throw new Error('the appliance lock has no Debian kernel, or no trixie main archive');
  const cached = path.join(APPLIANCE_CACHE, `kernel-${sha(serializeLock(lock)).slice(0, 16)}.json`);
  let pin: { kernel: DebEntry; meta: DebEntry };
  if (existsSync(cached)) pin = JSON.parse(readFileSync(cached, 'utf8')) as typeof pin;
  else {
    const all = await trixieKernels(main);
    // the newest older kernel whose metapackage (the spec's `kernel: linux-image-amd64`) trixie main still has
    const candidates = all.filter(
      (k) =>
        k.name !== 'linux-image-amd64' &&
        compareDebianVersions(k.version, image.version) < 0 &&
        all.some((m) => m.name === 'linux-image-amd64' && m.version === k.version),
    );
    candidates.sort((a, b) => compareDebianVersions(b.version, a.version));
    if (!candidates[0]) throw new Error(`trixie main has no kernel (with its linux-image-amd64) older than ${image.name} ${image.version}`);
    const m = all.find((e) => e.name === 'linux-image-amd64' && e.version === candidates[0]!.version)!;
    pin = { kernel: candidates[0], meta: m };
    log(`release 1.0 gets trixie's ${pin.kernel.name} ${pin.kernel.version} (the lock has ${image.name} ${image.version})`);
    await fsp.mkdir(APPLIANCE_CACHE, { recursive: true });
    await fsp.writeFile(`${cached}.tmp`, JSON.stringify(pin, null, 2) + '\n');
    await fsp.rename(`${cached}.tmp`, cached);
  }
  const kernel = { ...image, ...pin.kernel, uri: main };
  const metaOld = { ...meta, ...pin.meta, uri: main };
  const packages = lock.packages.map((p) => (p === image ? kernel : p === meta ? metaOld : p)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  await new PackagePool(poolDir()).fill([kernel, metaOld], log);
  return { ...lock, packages };
}

/** The lock with each vendor package's entry made the given .deb (what `lock --update` gives while the archive stands still). */
async function withVendor(lock: ProductLock, debs: string[]): Promise<ProductLock> {
  const pool = new PackagePool(poolDir());
  let packages = lock.packages;
  for (const deb of debs) {
    const c = debControl(deb);
    const sum = await sha256File(deb);
    await pool.put(deb, sum);
    if (!packages.some((p) => p.name === c.name)) throw new Error(`${c.name} is not in the lock: its spec or dependencies changed (IBU_TEST_RELOCK=1)`);
    packages = packages.map((p) => (p.name === c.name ? { ...p, version: c.version, sha256: sum, size: statSync(deb).size } : p));
  }
  return { ...lock, packages };
}

/**
 * Releases 1.0, 2.0 and 3.0 of the example appliance, from the cache or built now.
 * `ibuDevice`: the agent's .deb; default: built now from this checkout (reproducibly: same code, same bytes).
 */
export async function applianceReleases(o: { specDir?: string; ibuDevice?: string; log?: (m: string) => void } = {}): Promise<Appliance> {
  const log = o.log ?? ((m: string) => process.stderr.write(`# appliance: ${m}\n`));
  const specSrc = o.specDir ?? path.join(repoRoot(), 'examples/appliance');
  // the vendor .debs: its packages enter the cache key through the locks
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-appliance-build-'));
  try {
    const specDir = path.join(work, 'spec');
    await fsp.cp(specSrc, specDir, { recursive: true });
    await fsp.rm(path.join(specDir, 'vendor'), { recursive: true, force: true });
    const spec = path.join(specDir, 'product.yaml');
    const ibuDevice = o.ibuDevice ?? (await buildIbuDeviceDeb(path.join(work, 'ibu-device')));
    const locks: ProductLock[] = [];
    let base: ProductLock | null = null;
    for (const r of APPLIANCE_RELEASES) {
      // the lock resolves with the first release's vendor dir; the others swap the vendor .debs in
      const dir = base === null ? path.join(specDir, 'vendor') : path.join(work, `vendor-${r.version}`);
      const debs = await vendorDebs(dir, r.acme, r.broken, specDir, ibuDevice);
      base ??= await releaseLock(work, spec, debs, log);
      const lock = await withVendor(base, debs);
      locks.push(r.olderKernel ? await withOlderKernel(lock, log) : lock);
    }
    const code = ['dist/src/build', 'dist/src/image', 'assets/build', 'assets/initramfs-tools', 'assets/initramfs'].map((d) =>
      treeDigest(path.join(repoRoot(), d)),
    );
    const key = sha(JSON.stringify([locks.map(serializeLock), treeDigest(specSrc, ['vendor']), code])).slice(0, 16);
    const dir = path.join(APPLIANCE_CACHE, key);
    const images = Object.fromEntries(APPLIANCE_RELEASES.map((r) => [r.version, path.join(dir, `${r.version}.img`)])) as Record<ApplianceVersion, string>;
    if (Object.values(images).every((f) => existsSync(f))) return { images, dir, built: false };
    // IBU_APPLIANCE_REUSE=DIR: a set built earlier, for rerunning a scenario while an input changed (never in CI)
    const reuse = process.env.IBU_APPLIANCE_REUSE;
    if (reuse)
      return {
        images: Object.fromEntries(APPLIANCE_RELEASES.map((r) => [r.version, path.join(reuse, `${r.version}.img`)])) as Record<ApplianceVersion, string>,
        dir: reuse,
        built: false,
      };
    await fsp.mkdir(dir, { recursive: true });
    let previous: string | null = null;
    for (const [i, r] of APPLIANCE_RELEASES.entries()) {
      // a release already in the cache (a build cut short after it): same key, same bytes
      if (existsSync(images[r.version])) {
        previous = images[r.version];
        continue;
      }
      const lockFile = path.join(work, `${r.version}.lock`);
      await fsp.writeFile(lockFile, serializeLock(locks[i]!));
      const t0 = Date.now();
      const partial = path.join(work, `${r.version}.img`);
      await ibu('build', '--spec', spec, '--lock', lockFile, '--version', r.version, '--out', partial, ...(previous ? ['--previous', previous] : []));
      // into the cache only complete (a rename on one fs; the work dir may be another: copy, then rename)
      await run('cp', ['--sparse=always', partial, `${images[r.version]}.tmp`]);
      await fsp.rename(`${images[r.version]}.tmp`, images[r.version]);
      log(`built ${r.version} in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      previous = partial;
    }
    return { images, dir, built: true };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** `ibu release publish` of one appliance release into `store` on channel 'stable', signed with `<keysDir>/signing.key`. */
export function publishAppliance(app: Appliance, v: ApplianceVersion, store: string, keysDir: string) {
  return ibu(
    'release',
    'publish',
    '--image',
    app.images[v],
    '--version',
    v,
    '--store',
    store,
    '--key',
    path.join(keysDir, 'signing.key'),
    '--channel',
    'stable',
  );
}

/** Files to put into the device's own copy of its first image (its provisioning), path -> content. */
export type DeviceFiles = Record<string, string>;

/**
 * A device disk laid out the ibu way: ESP with GRUB EFI, host ext4 with /images/1.0.img (the
 * device's own copy, provisioned with `files` through a loop mount), grub.cfg from
 * assets/grub/10_ibu (rw root), both env copies committing 1.0.
 * A read-only appliance (`readonly`): the image stays as published (`image`: e.g. a copy with
 * its verity tree) and booted `ro`; the factory's files, all under /etc, go into the image's
 * /etc overlay layer on the host (images/.ibu/etc/<first>/upper), where the device keeps its own
 * /etc; `verity`: "<root hash> <hash offset>", the first image's verity record (else it boots unverified).
 */
export async function makeApplianceDisk(
  app: Appliance,
  o: { work: string; name: string; files?: DeviceFiles; hostMiB?: number; first?: ApplianceVersion; readonly?: { image: string; verity?: string } },
): Promise<{ disk: string; host: HostFs }> {
  const first = o.first ?? '1.0';
  const grub: GrubSettings = o.readonly ? { ...APPLIANCE_GRUB, IBU_ROOT_MODE: 'ro' } : APPLIANCE_GRUB;
  const efi = path.join(o.work, `BOOTX64-appliance-${grub.IBU_ROOT_MODE}.EFI`);
  if (!existsSync(efi)) await buildEfi(efi, grub);
  const hostTree = path.join(o.work, `host-${o.name}`);
  await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
  const img = path.join(hostTree, `images/${first}.img`);
  await run('cp', ['--sparse=always', o.readonly?.image ?? app.images[first], img]);
  if (o.readonly) await provisionEtcLayer(path.join(hostTree, 'images/.ibu'), first, o.files ?? {}, o.readonly.verity);
  else if (o.files && Object.keys(o.files).length > 0) await provision(img, o.files, path.join(o.work, `mnt-${o.name}`));
  await writeGrubCfg(hostTree, grub);
  await createGrubenv(hostTree, first);
  const disk = path.join(o.work, `disk-${o.name}.img`);
  const offset = await makeDisk({ efi, hostTree, hostMiB: o.hostMiB ?? 3072, out: disk });
  await fsp.rm(hostTree, { recursive: true, force: true });
  return { disk, host: new HostFs(disk, offset, o.work) };
}

/** Writes the device's own files into its image (what a factory does before shipping it). */
async function provision(img: string, files: DeviceFiles, mnt: string): Promise<void> {
  await fsp.mkdir(mnt, { recursive: true });
  await run('mount', ['-o', 'loop', img, mnt]);
  try {
    for (const [p, content] of Object.entries(files)) {
      const dest = path.join(mnt, p);
      await fsp.mkdir(path.dirname(dest), { recursive: true });
      await fsp.writeFile(dest, content, { mode: p.endsWith('.sh') ? 0o755 : 0o644 });
    }
  } finally {
    await run('umount', [mnt]);
    await fsp.rm(mnt, { recursive: true, force: true });
  }
}

/** A read-only image's factory state on the host: its /etc layer (what the initramfs overlays on the image's /etc) and verity record. */
async function provisionEtcLayer(state: string, v: string, files: DeviceFiles, verity: string | undefined): Promise<void> {
  for (const [p, content] of Object.entries(files)) {
    if (!p.startsWith('/etc/')) throw new Error(`${p}: a read-only appliance keeps its own files in /etc (or /var) only`);
    const dest = path.join(state, 'etc', v, 'upper', p.slice('/etc/'.length));
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    await fsp.writeFile(dest, content, { mode: p.endsWith('.sh') ? 0o755 : 0o644 });
  }
  if (verity !== undefined) {
    await fsp.mkdir(path.join(state, 'verity'), { recursive: true });
    await fsp.writeFile(path.join(state, 'verity', v), `${verity}\n`);
  }
}

/** The device's own agent config: its server and identity, health checks, what survives an upgrade. */
export function deviceAgentConfig(deviceId: string, token: string, o: { hold?: boolean } = {}): unknown {
  return {
    server: { url: 'http://10.0.2.100', deviceId, token },
    channel: 'stable',
    keyring: '/etc/ibu/keyring',
    // inside the window: always open here (the test cannot wait for a night)
    window: { timeZone: 'UTC', rules: [{ days: [0, 1, 2, 3, 4, 5, 6], start: '00:00', end: '00:00' }] },
    // the test's operator holds the upgrade back while making the device its own
    inhibitors: o.hold === false ? [] : [{ name: 'operator at work', lockFile: '/root/hold-upgrade' }],
    inhibitorWaitSeconds: 5,
    download: { deltaWaitSeconds: 900, maxRetryAfterSeconds: 5 },
    health: {
      deadlineSeconds: 240,
      checks: [
        // waits for the boot itself, so its answer is final: a broken release rolls back at once
        { name: 'system up', command: ['systemctl', 'is-system-running', '--wait'], timeoutSeconds: 200, retry: false },
        { name: 'acme-agent', command: ['/usr/bin/acme-agent', '--check'], timeoutSeconds: 20 },
      ],
    },
    pollSeconds: 5,
    migration: DEVICE_STATE,
  };
}

/**
 * What a factory puts into a device's copy of 1.0 for the tests, the demo and the bench: its agent
 * config (server, identity, health checks, what survives), the keyring, the operator's SSH key and
 * the shortened timers; `hold` adds the operator's inhibitor file (removed over SSH to let go).
 */
export async function deviceFiles(o: {
  name: string;
  token: string;
  keysDir: string;
  sshPub: string;
  hold: boolean;
  /** Agent settings over the test defaults (e.g. `reboot: { method }`). */
  config?: Record<string, unknown>;
}): Promise<DeviceFiles> {
  const config = { ...(deviceAgentConfig(o.name, o.token, { hold: o.hold }) as Record<string, unknown>), ...o.config };
  return {
    '/etc/ibu/agent.json': JSON.stringify(config, null, 2) + '\n',
    '/etc/ibu/keyring/signing.pub': await fsp.readFile(path.join(o.keysDir, 'signing.pub'), 'utf8'),
    '/root/.ssh/authorized_keys': o.sshPub,
    ...(o.hold ? { '/root/hold-upgrade': 'the operator sets the device up first\n' } : {}),
    ...TIMER_DROPINS,
  };
}

/** The device's own state the new image must carry (docs/agent.md, Configuration migration). */
export const DEVICE_STATE = [
  { path: '/etc/passwd', strategy: 'merge' },
  { path: '/etc/group', strategy: 'merge' },
  { path: '/etc/shadow', strategy: 'merge' },
  { path: '/etc/gshadow', strategy: 'merge' },
  { path: '/etc/hostname', strategy: 'copy' },
  { path: '/etc/machine-id', strategy: 'copy' },
  { path: '/etc/ssh', strategy: 'copy' },
  { path: '/etc/systemd/network', strategy: 'copy' },
  { path: '/etc/acme', strategy: 'copy' },
  { path: '/etc/ibu/agent.json', strategy: 'copy' },
  { path: '/etc/ibu/keyring', strategy: 'copy' },
  { path: '/etc/systemd/system/upgradectl-checkin.timer.d', strategy: 'copy' },
  { path: '/etc/systemd/system/upgradectl-prepare.timer.d', strategy: 'copy' },
  { path: '/etc/systemd/system/upgradectl-apply.timer.d', strategy: 'copy' },
  { path: '/root/.ssh', strategy: 'copy' },
  { path: '/home', strategy: 'copy' },
];

/**
 * Timers a test can wait for: the first prepare soon after boot, then 90 s after the last one
 * ended (OnUnitInactiveSec: a prepare takes minutes under TCG, and a period counted from its start
 * would run it again at once, holding the lock the apply timer needs); apply every minute. One
 * empty assignment only: it resets ALL of the timer's triggers (systemd.timer(5)), so a second
 * `OnUnitActiveSec=` would drop the OnBootSec just set and the timer would never fire.
 * The periods are long against a run (a prepare that finds nothing new is ~20 s of CPU under
 * TCG): systemd counts the boot as finished only once its job queue is empty, and timers whose
 * runs overlap keep it busy for good, so `systemctl is-system-running --wait` (the health check)
 * would never return. The units' own periods are minutes to hours (assets/systemd).
 */
export const TIMER_DROPINS = {
  '/etc/systemd/system/upgradectl-checkin.timer.d/e2e.conf': '[Timer]\nOnBootSec=\nOnBootSec=10s\nRandomizedDelaySec=0\nAccuracySec=1s\n',
  '/etc/systemd/system/upgradectl-prepare.timer.d/e2e.conf':
    '[Timer]\nOnBootSec=\nOnBootSec=30s\nOnUnitInactiveSec=90s\nRandomizedDelaySec=0\nAccuracySec=1s\nPersistent=false\n',
  '/etc/systemd/system/upgradectl-apply.timer.d/e2e.conf': '[Timer]\nOnBootSec=\nOnBootSec=60s\nOnUnitActiveSec=60s\nRandomizedDelaySec=0\nAccuracySec=1s\n',
};

/**
 * The upgrade's phases from an appliance's serial log (seconds, QEMU wall clock; for reading
 * and docs/benchmarks.md, never asserted on): prepare (timer start → "is prepared"), the wait
 * for apply, downtime (the vendor service stopped on `from` → running on `to`) and the whole
 * upgrade (prepare start → commit).
 */
export function upgradeTimings(log: string, from: string, to: string, acmeTo: string): Record<string, number | null> {
  const lines = log.split('\n');
  const at = (re: RegExp, after = 0): number | null => {
    for (const l of lines) {
      const m = /^\[\s*([\d.]+)\]/.exec(l);
      if (m && Number(m[1]) >= after && re.test(l)) return Number(m[1]);
    }
    return null;
  };
  const esc = (v: string) => v.replace(/\./g, '\\.');
  const multiUser = at(/Reached target multi-user\.target/);
  const prepareStart = at(/Starting upgradectl-prepare\.service/);
  const prepared = at(new RegExp(`${esc(to)} is prepared`));
  const reboot = at(new RegExp(`switch into ${esc(to)} by |Rebooting into ${esc(to)} for a trial boot`));
  const stopped = reboot === null ? null : at(/acme-agent stopped/, reboot);
  const up = stopped === null ? null : at(new RegExp(`acme-agent ${esc(acmeTo)} running`), stopped);
  const committed = at(new RegExp(`${esc(to)} passed its health checks and is now the committed default`));
  const d = (a: number | null, b: number | null) => (a === null || b === null ? null : Math.round((b - a) * 10) / 10);
  return {
    [`boot ${from} to multi-user.target`]: multiUser,
    prepare: d(prepareStart, prepared),
    'prepared -> reboot (apply)': d(prepared, reboot),
    'downtime (vendor service stopped -> running again)': d(stopped, up),
    'trial up -> committed': d(up, committed),
    'whole upgrade (prepare start -> committed)': d(prepareStart, committed),
  };
}
