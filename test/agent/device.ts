/**
 * A device on a temp dir for agent tests: real ext4 images made by mke2fs -d, a real signed
 * release store made by publishRelease, and a config rooted in the temp dir. The server, when a
 * test needs one, is the real `ibu serve` on that store (server.ts).
 *
 * Faked, because it cannot run here: the reboot (a script that records its call; the test then
 * "boots" by doing what GRUB does: take try_image once, clearing it with grub-editenv, else
 * default_image, and writing the kernel command line file the agent reads).
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';
import { generateKeys } from '../../src/release/keys.js';
import { publishRelease } from '../../src/release/publish.js';
import { LocalStore } from '../../src/store/local-store.js';
import { parseEnvBlock } from '../../src/boot/grubenv.js';
import { seededBytes } from '../helpers/ext4-images.js';

export const ROOT_CMDLINE = 'console=ttyS0 panic=10';

export interface ImageSpec {
  version: string;
  /** Extra files: path → content. */
  files?: Record<string, string>;
  /** Random incompressible payload so downloads take some chunks. */
  payloadBytes?: number;
  sizeMiB?: number;
  /** Publish with the dm-verity tree appended (publishRelease's verity). */
  verity?: boolean;
}

/** Base account files of a "distribution" image. */
export const BASE_PASSWD = 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n';
export const BASE_GROUP = 'root:x:0:\ndaemon:x:1:\nadm:x:4:\n';
export const BASE_SHADOW = 'root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n';

const seeded = seededBytes;

export async function buildImage(dir: string, spec: ImageSpec): Promise<string> {
  const tree = path.join(dir, `tree-${spec.version}`);
  await fsp.mkdir(path.join(tree, 'etc', 'ibu'), { recursive: true });
  await fsp.mkdir(path.join(tree, 'host'), { recursive: true });
  await fsp.mkdir(path.join(tree, 'usr', 'lib'), { recursive: true });
  await fsp.writeFile(path.join(tree, 'etc', 'passwd'), BASE_PASSWD);
  await fsp.writeFile(path.join(tree, 'etc', 'group'), BASE_GROUP);
  await fsp.writeFile(path.join(tree, 'etc', 'shadow'), BASE_SHADOW, { mode: 0o640 });
  await fsp.writeFile(path.join(tree, 'etc', 'ibu', 'image.json'), JSON.stringify({ version: spec.version }));
  await fsp.writeFile(path.join(tree, 'vmlinuz'), `kernel ${spec.version}\n`);
  await fsp.writeFile(path.join(tree, 'initrd.img'), `initrd ${spec.version}\n`);
  // Mostly shared payload (seeds reuse it), plus a per-version part.
  await fsp.writeFile(path.join(tree, 'usr', 'lib', 'shared.bin'), seeded(spec.payloadBytes ?? 512 * 1024, 7));
  await fsp.writeFile(path.join(tree, 'usr', 'lib', `v-${spec.version}.bin`), seeded(256 * 1024, 1000 + spec.version.length + spec.version.charCodeAt(0)));
  for (const [p, c] of Object.entries(spec.files ?? {})) {
    await fsp.mkdir(path.dirname(path.join(tree, p)), { recursive: true });
    await fsp.writeFile(path.join(tree, p), c);
  }
  // Fixed timestamps: the same spec always gives the same image bytes (mke2fs -d copies mtimes).
  await run('find', [tree, '-exec', 'touch', '-h', '-d', '@1700000000', '{}', '+']);
  const img = path.join(dir, `${spec.version}.img`);
  await run(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-b',
      '4096',
      '-U',
      '6b1f8f5e-2a42-4c1e-9c6d-6f2b9a0d1e01',
      '-E',
      'hash_seed=1c7d2a70-8e0b-4b9a-b0f5-3f1c2d3e4f50,root_owner=0:0',
      '-d',
      tree,
      img,
      `${spec.sizeMiB ?? 8}M`,
    ],
    {
      env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' },
    },
  );
  await fsp.rm(tree, { recursive: true, force: true });
  return img;
}

export interface Device {
  dir: string;
  host: string;
  images: string;
  grubDir: string;
  cmdline: string;
  systemRoot: string;
  configPath: string;
  rebootLog: string;
  keyring: string;
  storeDir: string;
  config: Record<string, unknown>;
  writeConfig(patch?: Record<string, unknown>): Promise<void>;
  /** What GRUB does at power-on: consume try_image once (save_env on both copies), else boot default_image. */
  boot(): Promise<string>;
  env(): Promise<{ default_image?: string; try_image?: string }>;
  cleanup(): Promise<void>;
}

/**
 * A device whose host partition is `<dir>/host` (a plain directory, or a mounted ext4 when
 * `hostDev` is given), running `running`, with the release store holding `releases`.
 */
export async function makeDevice(o: { running: string; releases: ImageSpec[]; installed?: string[]; hostMount?: string }): Promise<Device> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-agent-'));
  const host = o.hostMount ?? path.join(dir, 'host');
  const images = path.join(host, 'images');
  const grubDir = path.join(host, 'boot', 'grub');
  await fsp.mkdir(images, { recursive: true });
  await fsp.mkdir(grubDir, { recursive: true });
  const build = path.join(dir, 'build');
  await fsp.mkdir(build);
  const keys = path.join(dir, 'keys');
  await generateKeys(keys);
  const keyring = path.join(dir, 'keyring');
  await fsp.mkdir(keyring);
  await fsp.copyFile(path.join(keys, 'signing.pub'), path.join(keyring, 'release.pub'));
  const storeDir = path.join(dir, 'store');
  const store = new LocalStore(storeDir);
  for (const spec of o.releases) {
    const img = await buildImage(build, spec);
    await publishRelease({
      image: img,
      version: spec.version,
      store,
      keyFiles: [path.join(keys, 'signing.key')],
      channel: 'stable',
      requireKernel: false,
      fileMap: false,
      params: { min: 4096, avg: 16384, max: 65536 },
      verity: spec.verity === true,
    });
    if ((o.installed ?? [o.running]).includes(spec.version)) await run('cp', ['--sparse=always', img, path.join(images, `${spec.version}.img`)]);
  }
  // The built images stay in <dir>/build (the exact bytes the store holds, for delta tests).
  // The running system's root (source of migration): its accounts have a local user.
  const systemRoot = path.join(dir, 'system');
  await fsp.mkdir(path.join(systemRoot, 'etc', 'app'), { recursive: true });
  await fsp.writeFile(path.join(systemRoot, 'etc', 'passwd'), BASE_PASSWD + 'alice:x:1000:1000:Alice:/home/alice:/bin/bash\n');
  await fsp.writeFile(path.join(systemRoot, 'etc', 'group'), BASE_GROUP.replace('adm:x:4:', 'adm:x:4:alice') + 'alice:x:1000:\n');
  await fsp.writeFile(path.join(systemRoot, 'etc', 'shadow'), BASE_SHADOW.replace('root:*', 'root:$6$salt$hash') + 'alice:$6$a$b:19500:0:99999:7:::\n', {
    mode: 0o640,
  });
  await fsp.writeFile(path.join(systemRoot, 'etc', 'hostname'), 'device-42\n');
  await fsp.writeFile(path.join(systemRoot, 'etc', 'app', 'settings.conf'), 'retention=30\n');
  const cmdline = path.join(dir, 'cmdline');
  await fsp.writeFile(cmdline, `${ROOT_CMDLINE} loop=/images/${o.running}.img\n`);
  const rebootLog = path.join(dir, 'reboots.log');
  // The fake reboot: records that it was called (a real reboot cannot run in a test).
  const rebootScript = path.join(dir, 'fake-reboot');
  await fsp.writeFile(rebootScript, `#!/bin/sh\necho "$@" >> '${rebootLog}'\n`, { mode: 0o755 });
  const configPath = path.join(dir, 'agent.json');
  const config: Record<string, unknown> = {
    keyring,
    channel: 'stable',
    hostMount: host,
    cmdlineFile: cmdline,
    systemRoot,
    checkpoint: 'sync',
    reboot: { command: [rebootScript, 'reboot'], forceCommand: [rebootScript, 'force'], forceAfterSeconds: 0, sysrqAfterSeconds: 0 },
    space: { reserveBytes: 0 },
    download: { store: storeDir },
    migration: [
      { path: '/etc/passwd', strategy: 'merge' },
      { path: '/etc/group', strategy: 'merge' },
      { path: '/etc/shadow', strategy: 'merge' },
      { path: '/etc/hostname', strategy: 'copy' },
      { path: '/etc/app', strategy: 'keep-new' },
    ],
    health: { deadlineSeconds: 5, checks: [{ name: 'true', command: ['true'], timeoutSeconds: 5 }] },
    pollSeconds: 0.05,
  };
  const dev = deviceObject({ dir, host, images, grubDir, cmdline, systemRoot, configPath, rebootLog, keyring, storeDir, config });
  await dev.writeConfig();
  return dev;
}

type DeviceFields = Omit<Device, 'writeConfig' | 'boot' | 'env' | 'cleanup'>;

function deviceObject(fields: DeviceFields): Device {
  const { dir, grubDir, cmdline, configPath, config } = fields;
  const dev: Device = {
    ...fields,
    async writeConfig(patch = {}) {
      Object.assign(config, patch);
      await fsp.writeFile(configPath, JSON.stringify(config, null, 2));
    },
    async env() {
      const f = await fsp.readFile(path.join(grubDir, 'grubenv')).catch(() => null);
      let vars: Record<string, string> | null = null;
      try {
        vars = f ? parseEnvBlock(f) : null;
      } catch {
        vars = null;
      }
      if (vars && vars.ibu_seq !== undefined && vars.ibu_seq === vars.ibu_check) return vars;
      return parseEnvBlock(await fsp.readFile(path.join(grubDir, 'grubenv.bak')));
    },
    async boot() {
      const e = await dev.env();
      let v = e.default_image!;
      let trial = 0;
      if (e.try_image) {
        v = e.try_image;
        trial = 1;
        for (const f of ['grubenv', 'grubenv.bak']) await run('grub-editenv', [path.join(grubDir, f), 'unset', 'try_image'], { allowFailure: true });
      }
      await fsp.writeFile(cmdline, `${ROOT_CMDLINE} loop=/images/${v}.img ibu.version=${v} ibu.trial=${trial}\n`);
      return v;
    },
    async cleanup() {
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
  return dev;
}

/** A copy of a prepared device (cp -a, sparse), with every path in it and its config moved. */
export async function cloneDevice(src: Device, parent: string, name: string): Promise<Device> {
  const dir = path.join(parent, name);
  await run('cp', ['-a', '--sparse=always', src.dir, dir]);
  const move = (p: string): string => dir + p.slice(src.dir.length);
  const config = JSON.parse(JSON.stringify(src.config).split(src.dir).join(dir)) as Record<string, unknown>;
  const script = path.join(dir, 'fake-reboot');
  await fsp.writeFile(script, (await fsp.readFile(script, 'utf8')).split(src.dir).join(dir));
  const dev = deviceObject({
    dir,
    host: move(src.host),
    images: move(src.images),
    grubDir: move(src.grubDir),
    cmdline: move(src.cmdline),
    systemRoot: move(src.systemRoot),
    configPath: move(src.configPath),
    rebootLog: move(src.rebootLog),
    keyring: move(src.keyring),
    storeDir: move(src.storeDir),
    config,
  });
  await dev.writeConfig();
  return dev;
}

/** Node arguments that run the real CLI: compiled JS under dist/, or the TypeScript through tsx in development. */
export function cliArgv(): string[] {
  const here = new URL(import.meta.url).pathname;
  const ts = here.endsWith('.ts');
  const entry = path.resolve(path.dirname(here), `../../src/cli/upgradectl.${ts ? 'ts' : 'js'}`);
  const code = `import(${JSON.stringify(entry)}).then((m) => m.main(process.argv.slice(1)))`;
  return [...(ts ? ['--import', 'tsx'] : []), '-e', code, '--'];
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  json: Record<string, unknown> | null;
}

/** Runs the real upgradectl CLI as a child process with the device's config. */
export async function cli(dev: Device, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...cliArgv(), ...args, '--config', dev.configPath], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const stdout = Buffer.concat(out).toString();
      let json: Record<string, unknown> | null = null;
      try {
        json = JSON.parse(stdout.trim().split('\n').at(-1) ?? '') as Record<string, unknown>;
      } catch {
        json = null;
      }
      resolve({ code, signal, stdout, stderr: Buffer.concat(err).toString(), json });
    });
  });
}

/** Reads a file from an ext4 image with debugfs (the real tool, no mount). */
export async function debugfsCat(img: string, file: string): Promise<string> {
  return (await run('debugfs', ['-R', `cat ${file}`, img])).stdout;
}
