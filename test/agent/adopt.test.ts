// test-needs: root (loop-mounted root filesystems)
/**
 * upgradectl adopt on a "conventional system" made here: its root tree (accounts with a local
 * user, SSH host keys, network config, an fstab with a data disk, dpkg's record of grub-pc and
 * grub-efi-amd64, files identical to the release's) and its root filesystem, a real ext4 on a loop
 * device (root needed). The real CLI runs as a child process against a real signed store.
 *
 * Faked, because it cannot run here: update-grub (it would regenerate THIS machine's grub.cfg; a
 * script on PATH records its call; the generated GRUB script itself is checked with
 * grub-script-check in adopt-grub.test.ts) and the reboot (what GRUB does at power-on is done by
 * hand: consume try_image once, boot default_image, or fall to the conventional system).
 * The QEMU proof on real installer-made disks is test/e2e/adopt.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';
import { generateKeys } from '../../src/release/keys.js';
import { publishRelease } from '../../src/release/publish.js';
import { LocalStore } from '../../src/store/local-store.js';
import { GrubBootloader } from '../../src/boot/grub-bootloader.js';
import { seededBytes } from '../helpers/ext4-images.js';
import { BASE_GROUP, BASE_PASSWD, BASE_SHADOW, cli, debugfsCat, type Device } from './device.js';

const root = process.getuid?.() === 0;
const SHARED = 3 * 1024 * 1024;

interface Lab {
  dir: string;
  host: string;
  system: string;
  config: string;
  updateGrubLog: string;
  env: Record<string, string>;
  imageConfig: string;
  cmdline: string;
  run(args: string[], config?: string): ReturnType<typeof cli>;
  bootloader(): GrubBootloader;
}

async function withLoopFs(dir: string, sizeMiB: number, fsType: 'ext4' | 'tmpfs', fn: (mnt: string) => Promise<void>): Promise<void> {
  const img = path.join(dir, `rootfs-${fsType}.img`);
  const mnt = path.join(dir, `rootfs-${fsType}`);
  await fsp.mkdir(mnt);
  if (fsType === 'ext4') {
    await fsp.writeFile(img, '');
    await fsp.truncate(img, sizeMiB * 1024 * 1024);
    await run('mke2fs', ['-q', '-t', 'ext4', '-m', '0', img]);
    await run('mount', ['-o', 'loop', img, mnt]);
  } else await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m`, 'tmpfs', mnt]);
  try {
    await fn(mnt);
  } finally {
    await run('fsfreeze', ['--unfreeze', mnt], { allowFailure: true });
    await run('umount', [mnt], { allowFailure: true });
  }
}

/** A signed store with release 2.0 (file map included) and a conventional system's tree. */
async function makeLab(dir: string, host: string, o: { payload?: number; health?: string[] } = {}): Promise<Lab> {
  const tree = path.join(dir, 'image-tree');
  const w = async (base: string, p: string, c: string | Buffer, mode = 0o644) => {
    await fsp.mkdir(path.dirname(path.join(base, p)), { recursive: true });
    await fsp.writeFile(path.join(base, p), c, { mode });
  };
  await w(tree, 'etc/passwd', BASE_PASSWD);
  await w(tree, 'etc/group', BASE_GROUP);
  await w(tree, 'etc/shadow', BASE_SHADOW, 0o640);
  await w(tree, 'etc/hostname', 'appliance\n');
  await w(tree, 'etc/fstab', 'UUID=x / ext4 ro 0 1\n');
  await w(tree, 'etc/ssh/sshd_config', 'PermitRootLogin no # the image release\n');
  await w(tree, 'usr/lib/shared.bin', seededBytes(SHARED, 7));
  await w(tree, 'usr/lib/image-only.bin', seededBytes(o.payload ?? 256 * 1024, 99));
  await w(tree, 'vmlinuz', 'kernel 2.0\n');
  await w(tree, 'initrd.img', 'initrd 2.0\n');
  await fsp.mkdir(path.join(tree, 'host'));
  const img = path.join(dir, '2.0.img');
  const sizeMiB = Math.ceil(((o.payload ?? 0) + SHARED) / 1048576) + 16;
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, img, `${sizeMiB}M`]);
  const keys = path.join(dir, 'keys');
  await generateKeys(keys);
  const keyring = path.join(dir, 'keyring');
  await fsp.mkdir(keyring);
  await fsp.copyFile(path.join(keys, 'signing.pub'), path.join(keyring, 'release.pub'));
  const storeDir = path.join(dir, 'store');
  await publishRelease({
    image: img,
    version: '2.0',
    store: new LocalStore(storeDir),
    keyFiles: [path.join(keys, 'signing.key')],
    channel: 'stable',
    requireKernel: false,
    params: { min: 4096, avg: 16384, max: 65536 },
  });

  // The conventional system: the same shared library (a file the image also has), its own identity.
  const system = path.join(dir, 'system');
  await w(system, 'etc/passwd', BASE_PASSWD + 'alice:x:1000:1000:Alice:/home/alice:/bin/bash\n');
  await w(system, 'etc/group', BASE_GROUP + 'alice:x:1000:\n');
  await w(system, 'etc/shadow', BASE_SHADOW.replace('root:*', 'root:$6$salt$hash') + 'alice:$6$a$b:19500:0:99999:7:::\n', 0o640);
  await w(system, 'etc/hostname', 'box-0042\n');
  await w(system, 'etc/machine-id', '0123456789abcdef0123456789abcdef\n');
  await w(system, 'etc/ssh/ssh_host_ed25519_key', 'PRIVATE\n', 0o600);
  await w(system, 'etc/ssh/ssh_host_ed25519_key.pub', 'ssh-ed25519 AAAA box-0042\n');
  await w(system, 'etc/ssh/sshd_config', 'PermitRootLogin yes # bookworm\n');
  await w(system, 'etc/network/interfaces', 'auto eth0\niface eth0 inet static\n  address 192.0.2.42/24\n');
  await w(system, 'etc/fstab', 'UUID=aaaa / ext4 errors=remount-ro 0 1\nUUID=bbbb /data ext4 defaults 0 2\n/swapfile none swap sw 0 0\n');
  await w(system, 'usr/lib/shared.bin', seededBytes(SHARED, 7));
  await w(system, 'var/cache/apt/archives/big_1.0_amd64.deb', seededBytes(2 * 1024 * 1024, 5));
  await w(
    system,
    'var/lib/dpkg/status',
    ['grub-pc', 'grub-efi-amd64'].map((p) => `Package: ${p}\nStatus: install ok installed\nVersion: 2.06-13+deb12u1\nArchitecture: amd64\n`).join('\n'),
  );
  const bin = path.join(dir, 'bin');
  const updateGrubLog = path.join(dir, 'update-grub.log');
  await w(bin, 'update-grub', `#!/bin/sh\necho called >> '${updateGrubLog}'\n`, 0o755);
  const cmdline = path.join(dir, 'cmdline');
  const config = path.join(dir, 'agent.json');
  const health = { deadlineSeconds: 2, checks: [{ name: 'app', command: o.health ?? ['true'], timeoutSeconds: 2 }] };
  const base = {
    keyring,
    channel: 'stable',
    systemRoot: system,
    checkpoint: 'sync',
    reboot: { command: ['true'], forceCommand: ['true'], forceAfterSeconds: 0 },
    space: { reserveBytes: 1024 * 1024 },
    download: { store: storeDir },
    migration: [{ path: '/etc/app', strategy: 'copy' }],
    health,
    pollSeconds: 0.05,
  };
  await fsp.writeFile(config, JSON.stringify(base, null, 2));
  // What the image's own config becomes, as seen from this test (its /host is `host`).
  const imageConfig = path.join(dir, 'image-agent.json');
  await fsp.writeFile(
    imageConfig,
    JSON.stringify(
      {
        ...base,
        hostMount: host,
        cmdlineFile: cmdline,
        systemRoot: path.join(dir, 'image-root'),
        migration: [],
        boot: { envDir: path.join(host, 'boot/ibu') },
      },
      null,
      2,
    ),
  );
  const env = { PATH: `${bin}:${process.env.PATH}` };
  return {
    dir,
    host,
    system,
    config,
    updateGrubLog,
    env,
    imageConfig,
    cmdline,
    run: (args, cfg = config) => cli({ configPath: cfg } as Device, args, env),
    bootloader: () => new GrubBootloader({ dir: path.join(host, 'boot/ibu') }),
  };
}

/** What GRUB does at power-on (assets/grub/10_ibu, adopted mode): the trial once, else the committed image, else the conventional system. */
async function powerOn(lab: Lab): Promise<string> {
  const st = await lab.bootloader().read();
  let v: string | null = null;
  let trial = 0;
  if (st.tryImage) {
    v = st.tryImage;
    trial = 1;
    await lab.bootloader().clearTry();
  } else if (st.defaultImage) v = st.defaultImage;
  if (!v) return 'conventional';
  await fsp.writeFile(lab.cmdline, `console=ttyS0 loop=/images/${v}.img boot=ibu ibu.version=${v} ibu.trial=${trial}\n`);
  return v;
}

test('adopt: preflight, seeded download, migration, GRUB trial; the trial commits; --finalize', { skip: !root && 'needs root (loop mounts)' }, async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-adopt-'));
  try {
    await withLoopFs(dir, 64, 'ext4', async (host) => {
      const lab = await makeLab(dir, host);
      const r = await lab.run(['adopt', '--version', '2.0', '--host', host, '--no-reboot', '--json']);
      assert.equal(r.code, 0, r.stderr);
      const out = r.json as { download: { downloadedBytes: number; liveSeedBytes: number; reusedBytes: number }; plan: { grubPackage: string } };
      // The shared library came from the live root, the rest from the store.
      assert.ok(out.download.liveSeedBytes >= SHARED * 0.9, `live seed gave ${out.download.liveSeedBytes} bytes`);
      assert.ok(out.download.downloadedBytes < SHARED / 2, `downloaded ${out.download.downloadedBytes} bytes`);
      assert.match(out.plan.grubPackage, /^grub-(pc|efi-amd64)$/);
      // GRUB: the script is installed and update-grub ran; the env boots 2.0 once, nothing committed yet.
      const script = await fsp.stat(path.join(lab.system, 'etc/grub.d/05_ibu'));
      assert.ok(script.mode & 0o100, '05_ibu is executable');
      assert.equal((await fsp.readFile(lab.updateGrubLog, 'utf8')).trim(), 'called');
      const st = await lab.bootloader().read();
      assert.deepEqual([st.tryImage, st.defaultImage, st.adopted ?? null], ['2.0', null, '2.0']);
      // Migrated from the live system into the image.
      const img = path.join(host, 'images/2.0.img');
      assert.equal(await debugfsCat(img, '/etc/hostname'), 'box-0042\n');
      assert.equal(await debugfsCat(img, '/etc/machine-id'), '0123456789abcdef0123456789abcdef\n');
      assert.equal(await debugfsCat(img, '/etc/ssh/ssh_host_ed25519_key'), 'PRIVATE\n');
      assert.match(await debugfsCat(img, '/etc/ssh/sshd_config'), /the image release/, "the image's sshd_config stays");
      assert.match(await debugfsCat(img, '/etc/network/interfaces'), /192\.0\.2\.42/);
      assert.match(await debugfsCat(img, '/etc/passwd'), /^alice:x:1000:/m);
      assert.match(await debugfsCat(img, '/etc/shadow'), /^root:\$6\$salt\$hash:/m);
      const fstab = await debugfsCat(img, '/etc/fstab');
      assert.match(fstab, /^UUID=x \/ ext4 ro/m, "the image's own root entry stays");
      assert.match(fstab, /^UUID=bbbb \/data ext4/m, 'the data disk is kept');
      assert.doesNotMatch(fstab, /UUID=aaaa|swapfile/, 'the old root and its swap file are not');
      const imgCfg = JSON.parse(await debugfsCat(img, '/etc/ibu/agent.json')) as { hostMount: string; boot: { envDir: string }; systemRoot?: string };
      assert.deepEqual([imgCfg.hostMount, imgCfg.boot.envDir, imgCfg.systemRoot], ['/host', '/host/boot/ibu', undefined]);

      // Power on: GRUB boots 2.0 once; its confirm commits it. The conventional system stays the last resort.
      assert.equal(await powerOn(lab), '2.0');
      const c = await lab.run(['confirm', '--json'], lab.imageConfig);
      assert.equal(c.code, 0, c.stderr);
      assert.equal(c.json!.outcome, 'committed');
      const after = await lab.bootloader().read();
      assert.deepEqual([after.defaultImage, after.tryImage, after.adopted ?? null], ['2.0', null, '2.0']);
      // adopt again on a committed machine: refused, nothing changed.
      const again = await lab.run(['adopt', '--version', '2.0', '--host', host, '--no-reboot']);
      assert.equal(again.code, 11, again.stderr);
      const f = await lab.run(['adopt', '--finalize', '--json'], lab.imageConfig);
      assert.equal(f.code, 0, f.stderr);
      assert.equal((await lab.bootloader().read()).adopted, undefined);
    });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('adopt: a failing health check ends on the conventional system; adopt runs again', { skip: !root && 'needs root (loop mounts)' }, async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-adopt-'));
  try {
    await withLoopFs(dir, 64, 'ext4', async (host) => {
      const lab = await makeLab(dir, host, { health: ['false'] });
      const r = await lab.run(['adopt', '--version', '2.0', '--host', host, '--no-reboot']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await powerOn(lab), '2.0');
      const c = await lab.run(['confirm', '--json'], lab.imageConfig);
      assert.equal(c.code, 10, c.stderr);
      const st = await lab.bootloader().read();
      assert.deepEqual(
        [st.defaultImage, st.tryImage, st.adopted ?? null],
        [null, null, '2.0'],
        'no image left to boot: GRUB goes on to the conventional entries',
      );
      assert.equal(await powerOn(lab), 'conventional');
      const j = JSON.parse(await fsp.readFile(path.join(host, 'images/.ibu/state.json'), 'utf8')) as { state: string; lastError: { code: string } };
      assert.deepEqual([j.state, j.lastError.code], ['rolled-back', 'HEALTH_CHECK_FAILED']);
      // Nothing of the conventional system was touched but the grub.d script; adoption runs again.
      assert.equal(await fsp.readFile(path.join(lab.system, 'etc/hostname'), 'utf8'), 'box-0042\n');
      const again = await lab.run(['adopt', '--version', '2.0', '--host', host, '--no-reboot', '--json']);
      assert.equal(again.code, 0, again.stderr);
      assert.equal((await lab.bootloader().read()).tryImage, '2.0');
    });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test(
  'adopt: a disk too small is NO_SPACE with what is missing and what could be cleaned; nothing touched',
  { skip: !root && 'needs root (loop mounts)' },
  async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-adopt-'));
    try {
      await withLoopFs(dir, 12, 'ext4', async (host) => {
        const lab = await makeLab(dir, host, { payload: 16 * 1024 * 1024 });
        const before = (await run('find', [host, lab.system, '-printf', '%p %s %T@\n'])).stdout;
        const r = await lab.run(['adopt', '--version', '2.0', '--host', host, '--no-reboot', '--json']);
        assert.equal(r.code, 6, r.stderr);
        const err = (r.json as { error: { code: string; message: string } }).error;
        assert.equal(err.code, 'NO_SPACE');
        assert.match(err.message, /MiB missing/);
        assert.match(err.message, /apt-get clean\) \(2\.0 MiB\)/);
        assert.equal((await run('find', [host, lab.system, '-printf', '%p %s %T@\n'])).stdout, before, 'nothing on either side changed');
        await assert.rejects(fsp.access(lab.updateGrubLog));
      });
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  },
);

test('adopt: a root filesystem other than ext4 is refused with ADOPT_UNSUPPORTED; nothing touched', { skip: !root && 'needs root (loop mounts)' }, async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-adopt-'));
  try {
    await withLoopFs(dir, 64, 'tmpfs', async (host) => {
      const lab = await makeLab(dir, host);
      const r = await lab.run(['adopt', '--version', '2.0', '--host', host, '--no-reboot', '--json']);
      assert.equal(r.code, 7, r.stderr);
      const err = (r.json as { error: { code: string; message: string } }).error;
      assert.equal(err.code, 'ADOPT_UNSUPPORTED');
      assert.match(err.message, /is tmpfs; .*needs ext4/);
      assert.deepEqual(await fsp.readdir(host), []);
    });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
