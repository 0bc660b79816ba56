// test-needs: root (mmdebstrap, chroot, dpkg inside a Debian 13 root; CI runs as root). scripts/test-files.sh reads this line.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/*
 * The ibu-device package for real: packaging/device/build.sh makes 1.0 and 1.1 from this checkout,
 * lintian reports no error and no warning, and a Debian 13 (trixie) root made by mmdebstrap
 * (minbase + nodejs + systemd + the package's dependencies; the tarball is cached under
 * /var/cache/ibu-e2e/deb-trixie, keyed by its inputs and the month) installs it with dpkg:
 *   - upgradectl runs under Debian's nodejs 20, and so do the bundled Node-API addons;
 *   - systemd 257 of that root verifies the units and finds no ordering cycle at boot;
 *   - debhelper's maintainer scripts enabled the confirm unit and the timers;
 *   - the initramfs hook and boot=ibu script are where initramfs-tools looks, with the trigger;
 *   - 1.0 -> 1.1 keeps a locally edited /etc/ibu/agent.json, without a prompt;
 *   - remove keeps the conffile, purge removes it and the enrollment files, and leaves the root
 *     as it was before the install (the set of paths compared).
 */
const repo = process.cwd();
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ibu-deb-test-'));
const root = path.join(work, 'root');
const mounts: string[] = [];
after(() => {
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  fs.rmSync(work, { recursive: true, force: true });
});

const MIRROR = process.env.IBU_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
// What a Debian 13 appliance has before ibu-device goes in: the package's Depends and Recommends.
const INCLUDE = ['nodejs', 'systemd', 'systemd-sysv', 'e2fsprogs', 'initramfs-tools', 'mount', 'grub-common'];

function sh(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input: opts.input ?? '', env: opts.env ?? process.env, maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${(r.stderr ?? '').slice(-3000)}${(r.stdout ?? '').slice(-2000)}`);
  return r.stdout;
}
const inRoot = (args: string[], input?: string): string =>
  sh('chroot', [root, ...args], { input, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive' } });
// lstat: a unit's symlink points at an absolute path inside the root, not on this machine
const exists = (p: string): boolean => fs.lstatSync(path.join(root, p), { throwIfNoEntry: false }) !== undefined;

/** The trixie root as a tarball, made once per inputs and month (security updates come monthly enough). */
function trixieTarball(): string {
  const key = createHash('sha256')
    .update(JSON.stringify({ suite: 'trixie', variant: 'minbase', MIRROR, INCLUDE, month: new Date().toISOString().slice(0, 7) }))
    .digest('hex')
    .slice(0, 16);
  const dir = process.env.IBU_DEB_TEST_CACHE ?? '/var/cache/ibu-e2e/deb-trixie';
  const tar = path.join(dir, `trixie-${key}.tar`);
  if (fs.existsSync(tar)) return tar;
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `${tar}.${process.pid}.tmp`;
  sh('nice', ['mmdebstrap', '--quiet', '--variant=minbase', `--include=${INCLUDE.join(',')}`, '--format=tar', 'trixie', tmp, MIRROR]);
  fs.renameSync(tmp, tar);
  return tar;
}

/** Every path under the root but the ones that change by themselves (dpkg's database, logs, caches). */
function paths(): Set<string> {
  const skip = /^\/(proc|dev|sys|run|tmp)(\/|$)|^\/var\/(lib\/dpkg|log|cache)(\/|$)/;
  const out = new Set<string>();
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const p = `${rel}/${e.name}`;
      if (skip.test(p)) continue;
      out.add(p);
      if (e.isDirectory() && !e.isSymbolicLink()) walk(p);
    }
  };
  walk('');
  return out;
}

let deb10 = '';
let deb11 = '';
before(() => {
  const out = path.join(work, 'debs');
  const build = (v: string): string =>
    sh('bash', [path.join(repo, 'packaging/device/build.sh'), '--out', out, '--version', v])
      .trim()
      .split('\n')
      .pop()!;
  deb10 = build('1.0');
  deb11 = build('1.1');
  fs.mkdirSync(root);
  sh('tar', ['-C', root, '-xf', trixieTarball()]);
  for (const [src, dst, type] of [
    ['proc', 'proc', 'proc'],
    ['/dev', 'dev', 'bind'],
  ]) {
    const target = path.join(root, dst);
    sh('mount', type === 'bind' ? ['--bind', src, target] : ['-t', type, src, target]);
    mounts.push(target);
  }
  fs.copyFileSync(deb10, path.join(root, 'tmp/ibu-device_1.0.deb'));
  fs.copyFileSync(deb11, path.join(root, 'tmp/ibu-device_1.1.deb'));
});

test('build.sh names the .deb after the version and prints its path last', () => {
  assert.equal(path.basename(deb10), 'ibu-device_1.0_amd64.deb');
  assert.equal(path.basename(deb11), 'ibu-device_1.1_amd64.deb');
  const control = sh('dpkg-deb', ['-f', deb10]);
  assert.match(control, /^Depends: .*nodejs \(>= 20[.\d]*\)/m);
  assert.match(control, /^Version: 1\.0$/m);
  // server-only code and its dependencies stay out of the device
  const files = sh('dpkg-deb', ['-c', deb10]);
  assert.match(files, /\.\/usr\/lib\/ibu\/dist\/src\/cli\/upgradectl\.js/);
  assert.doesNotMatch(files, /fastify|better-sqlite3|node_modules\/pg\/|dist\/src\/server\//);
});

test('lintian: no errors, no warnings', () => {
  const r = spawnSync('lintian', ['--allow-root', '--pedantic', '-I', deb10], { encoding: 'utf8' });
  const tags = r.stdout.split('\n').filter((l) => /^[EW]: /.test(l));
  assert.deepEqual(tags, [], r.stdout + r.stderr);
});

test('installs on Debian 13, upgradectl runs under its nodejs, units and initramfs hook in place', () => {
  const before = paths();
  assert.match(inRoot(['node', '--version']), /^v20\./);
  inRoot(['dpkg', '-i', '/tmp/ibu-device_1.0.deb']);

  assert.equal(inRoot(['upgradectl', '--version']).trim(), '1.0');
  // status reads the boot state: here there is none (no /host/boot/grub), said in the JSON
  const status = JSON.parse(inRoot(['upgradectl', 'status', '--json'])) as Record<string, unknown>;
  assert.ok('running' in status && 'bootloader' in status, JSON.stringify(status));
  // the Node-API addons, built for Node 20 here, under Debian's nodejs
  const probe = `import { chunkCompressor, chunkDecompressor } from '/usr/lib/ibu/dist/src/chunk/compress.js';
import { chunkHasher } from '/usr/lib/ibu/dist/src/chunk/hash.js';
const data = Buffer.from('ibu '.repeat(10000));
const back = chunkDecompressor()('probe', chunkCompressor()(data), data.length);
console.log(JSON.stringify({ roundTrip: back.equals(data), blake3: chunkHasher('blake3')(Buffer.from('abc')) }));`;
  assert.deepEqual(JSON.parse(inRoot(['node', '--input-type=module', '-'], probe)), {
    roundTrip: true,
    blake3: '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85',
  });

  // systemd 257 of the root: the units verify, and the boot transaction has no ordering cycle
  const units = ['confirm.service', 'checkin.service', 'checkin.timer', 'prepare.service', 'prepare.timer', 'apply.service', 'apply.timer'];
  const verify = spawnSync('chroot', [root, 'systemd-analyze', 'verify', '--man=no', ...units.map((u) => `/usr/lib/systemd/system/upgradectl-${u}`)], {
    encoding: 'utf8',
  });
  assert.equal(verify.status, 0, verify.stderr);
  assert.equal(verify.stderr.trim(), '', 'no warnings');
  const boot = spawnSync('chroot', [root, 'systemd-analyze', 'verify', '--man=no', 'multi-user.target'], { encoding: 'utf8' });
  assert.doesNotMatch(boot.stderr, /cycle|upgradectl/i, boot.stderr);

  // debhelper's postinst enabled what runs by itself; the services behind timers have no [Install]
  for (const u of ['upgradectl-confirm.service', 'upgradectl-checkin.timer', 'upgradectl-prepare.timer', 'upgradectl-apply.timer']) {
    assert.equal(inRoot(['systemctl', 'is-enabled', u]).trim(), 'enabled', u);
    assert.ok(exists(`var/lib/systemd/deb-systemd-helper-enabled/${u}.dsh-also`), `${u} in deb-systemd-helper's state`);
  }
  assert.ok(exists('etc/systemd/system/multi-user.target.wants/upgradectl-confirm.service'));
  assert.ok(exists('etc/systemd/system/timers.target.wants/upgradectl-prepare.timer'));

  // initramfs-tools finds the hook and the boot script; the trigger rebuilds initrds on changes
  assert.ok(fs.statSync(path.join(root, 'usr/share/initramfs-tools/hooks/ibu')).mode & 0o111, 'hook executable');
  assert.ok(exists('usr/share/initramfs-tools/scripts/ibu'));
  assert.ok(exists('usr/share/ibu/ibu-boot.sh'));
  assert.match(fs.readFileSync(path.join(root, 'var/lib/dpkg/info/ibu-device.triggers'), 'utf8'), /^activate-noawait update-initramfs$/m);
  // conffiles, the mount point, the runtime directory
  assert.deepEqual(fs.readFileSync(path.join(root, 'var/lib/dpkg/info/ibu-device.conffiles'), 'utf8').trim().split('\n').sort(), [
    '/etc/grub.d/10_ibu',
    '/etc/ibu/agent.json',
  ]);
  assert.ok(fs.statSync(path.join(root, 'host')).isDirectory());
  assert.ok(exists('usr/lib/tmpfiles.d/ibu-device.conf'));
  // 10_ibu on a machine without /images adds nothing to grub.cfg (grub-mkconfig runs it so)
  assert.equal(inRoot(['/etc/grub.d/10_ibu']), '');
  // the default config is one upgradectl accepts (CONFIG_INVALID would exit 2)
  inRoot(['upgradectl', 'status', '--json', '--config', '/etc/ibu/agent.json']);

  // 1.0 -> 1.1 with a locally edited conffile: kept, no prompt (stdin is empty)
  const cfg = path.join(root, 'etc/ibu/agent.json');
  const edited = fs.readFileSync(cfg, 'utf8').replace('"deadlineSeconds": 900', '"deadlineSeconds": 1200');
  assert.notEqual(edited, fs.readFileSync(cfg, 'utf8'));
  fs.writeFileSync(cfg, edited);
  inRoot(['dpkg', '-i', '/tmp/ibu-device_1.1.deb']);
  assert.equal(inRoot(['upgradectl', '--version']).trim(), '1.1');
  assert.equal(fs.readFileSync(cfg, 'utf8'), edited);
  assert.equal(inRoot(['systemctl', 'is-enabled', 'upgradectl-confirm.service']).trim(), 'enabled');

  // remove: the program goes, the conffile stays; purge: the conffile, the enrollment files, the
  // units' state and the mount point go, and the root has exactly the paths it had before
  fs.writeFileSync(path.join(root, 'etc/ibu/token'), 'secret\n', { mode: 0o600 });
  fs.writeFileSync(path.join(root, 'etc/ibu/device.key'), 'key\n', { mode: 0o600 });
  inRoot(['dpkg', '-r', 'ibu-device']);
  assert.ok(!exists('usr/bin/upgradectl') && !exists('usr/lib/ibu'));
  assert.equal(fs.readFileSync(cfg, 'utf8'), edited);
  inRoot(['dpkg', '--purge', 'ibu-device']);
  const left = [...paths()].filter((p) => !before.has(p));
  const gone = [...before].filter((p) => !paths().has(p));
  assert.deepEqual({ left, gone }, { left: [], gone: [] });
});
