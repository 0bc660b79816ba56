// test-needs: root (mmdebstrap --mode=root, loop mounts for --previous; CI runs as root). scripts/test-files.sh reads this line.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseLock, serializeLock, type ProductLock } from '../../src/build/lock-file.js';
import { PackagePool, poolDir } from '../../src/build/package-pool.js';
import { parseReleasePackages, PACKAGES_JSON_PATH } from '../../src/build/release-packages.js';
import { diffImageFiles } from '../../src/image/diff.js';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { sha256File } from '../../src/util/sha256-file.js';
import { runIbu } from '../helpers/cli.js';
import { buildIbuDeviceDeb } from '../helpers/ibu-device-deb.js';

/*
 * The example appliance (examples/appliance: trixie minbase, systemd, the kernel, openssh, the
 * agent's package ibu-device and the vendor package acme-agent, both made here), built for real
 * with mmdebstrap:
 *  1. `ibu build lock` against deb.debian.org fills the pool (/var/cache/ibu-build/pool, kept
 *     between runs; the lock is kept beside it and reused while the vendor .deb is the same —
 *     IBU_TEST_RELOCK=1 makes a fresh one);
 *  2. two builds from that lock give the same sha256;
 *  3. acme-agent 1.1 replaces 1.0 in the lock (what `lock --update` gives while the archive
 *     stands still) and the build with --previous differs from the first by a delta bounded by
 *     the changed files, which applies exactly.
 * Plus the bad inputs of issue #16 item 6, each with its code and no image left behind.
 */
const repo = process.cwd();
const cache = path.dirname(poolDir());
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ibu-appliance-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));
const app = path.join(work, 'appliance');
fs.cpSync(path.join(repo, 'examples/appliance'), app, { recursive: true });
const spec = path.join(app, 'product.yaml');
const lockFile = path.join(app, 'product.lock');
const out = path.join(work, 'out');
fs.mkdirSync(out);

function makeAgent(version: string, dir: string): string {
  execFileSync(path.join(app, 'make-acme-agent.sh'), [version, dir]);
  return path.join(dir, `acme-agent_${version}_all.deb`);
}

function ibuOk(args: string[]): string {
  const r = runIbu(args);
  assert.equal(r.code, 0, `ibu ${args.join(' ')} failed (${r.code}):\n${r.stderr.slice(-3000)}`);
  return r.stdout.toString('utf8');
}

function ibuFails(args: string[], code: string, exit: number, re?: RegExp): string {
  const r = runIbu([...args, '--json']);
  const body = JSON.parse(r.stdout.toString('utf8').trim().split('\n').pop() ?? '{}') as { error?: { code: string; message: string } };
  assert.equal(body.error?.code, code, `expected ${code}, got ${r.code}: ${r.stderr.slice(-2000)}`);
  assert.equal(r.code, exit);
  if (re) assert.match(body.error!.message, re);
  return body.error!.message;
}

const imgs = (): string[] => fs.readdirSync(out).filter((f) => f.endsWith('.img') || f.endsWith('.partial'));
const agent10 = makeAgent('1.0', path.join(app, 'vendor'));
const ibuDevice = await buildIbuDeviceDeb(path.join(app, 'vendor'));
let lock: ProductLock;

test('ibu build lock resolves the example against the archive and fills the pool (reused while the vendor .deb is the same)', async () => {
  const cached = path.join(cache, 'test-appliance.lock');
  const vendor = await Promise.all([agent10, ibuDevice].map(async (f) => ({ f, sha: await sha256File(f) })));
  const reuse =
    process.env.IBU_TEST_RELOCK !== '1' &&
    fs.existsSync(cached) &&
    vendor.every((v) => parseLock(fs.readFileSync(cached, 'utf8')).packages.some((p) => p.origin === 'vendor' && p.sha256 === v.sha));
  if (reuse) {
    fs.copyFileSync(cached, lockFile);
    // The vendor .debs must be pooled too (a cold pool with a kept lock); mirror packages are fetched by the build.
    for (const v of vendor) await new PackagePool(poolDir()).put(v.f, v.sha);
  } else {
    const t0 = Date.now();
    ibuOk(['build', 'lock', '--spec', spec, '--out', lockFile]);
    process.stderr.write(`# lock: ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    fs.mkdirSync(cache, { recursive: true });
    fs.copyFileSync(lockFile, cached);
  }
  lock = parseLock(fs.readFileSync(lockFile, 'utf8'));
  const names = lock.packages.map((p) => p.name);
  for (const n of ['acme-agent', 'ibu-device', 'nodejs', 'openssh-server', 'systemd', 'linux-image-amd64', 'libc6'])
    assert.ok(names.includes(n), `${n} locked`);
  assert.ok(lock.archives.some((a) => a.codename === 'trixie' && /^[0-9a-f]{64}$/.test(a.sha256)));
  const pool = new PackagePool(poolDir());
  assert.ok(lock.packages.filter((p) => p.origin === 'vendor').every((p) => pool.has(p.sha256)));
  // Without --update an existing lock is never overwritten.
  ibuFails(['build', 'lock', '--spec', spec, '--out', lockFile], 'USAGE', 2, /--update/);
});

test('two builds from one lock are bit for bit identical, and the image carries its package list', () => {
  const t0 = Date.now();
  ibuOk(['build', '--spec', spec, '--lock', lockFile, '--version', '2026.12.1', '--out', path.join(out, 'a1.img')]);
  process.stderr.write(`# build: ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
  const second = JSON.parse(ibuOk(['build', '--spec', spec, '--lock', lockFile, '--version', '2026.12.1', '--out', path.join(out, 'a2.img'), '--json'])) as {
    sha256: string;
  };
  const first = execFileSync('sha256sum', [path.join(out, 'a1.img')])
    .toString()
    .split(' ')[0];
  assert.equal(second.sha256, first, 'same spec + lock → same sha256');
  const r = Ext4Reader.open(path.join(out, 'a1.img'));
  try {
    const pk = parseReleasePackages(r.readFile(PACKAGES_JSON_PATH).toString('utf8'), 'a1.img');
    assert.equal(pk.packages.length, lock.packages.length);
    assert.equal(r.readFile('/etc/hostname').toString(), 'acme-box\n');
    assert.match(r.readFile('/etc/motd').toString(), /acme-box 2026\.12\.1/);
    assert.match(r.readFile('/etc/passwd').toString(), /^acme:x:2000:2000:/m);
    assert.equal(r.readFile('/etc/machine-id').length, 0);
    const ssh = r.list('/etc/ssh').map((e) => e.path);
    assert.ok(!ssh.some((n) => n.includes('/ssh_host_')), 'no SSH host key baked in');
    assert.equal(r.stat('/etc/systemd/system/multi-user.target.wants/acme-agent.service').type, 'symlink', 'acme-agent enabled');
    assert.equal(r.readlink('/etc/systemd/system/apt-daily.timer'), '/dev/null');
    assert.throws(() => r.stat('/etc/resolv.conf'), 'no resolv.conf from the build host');
  } finally {
    r.close();
  }
});

test('a bumped vendor package, built with --previous, is a small delta that applies exactly', () => {
  const agent11 = makeAgent('1.1', path.join(work, 'v11'));
  const sha = execFileSync('sha256sum', [agent11]).toString().split(' ')[0]!;
  const lock2: ProductLock = {
    ...lock,
    packages: lock.packages.map((p) => (p.name === 'acme-agent' ? { ...p, version: '1.1', sha256: sha, size: fs.statSync(agent11).size } : p)),
  };
  fs.writeFileSync(path.join(app, 'product-1.1.lock'), serializeLock(lock2));
  fs.mkdirSync(path.join(poolDir(), 'sha256', sha.slice(0, 2)), { recursive: true });
  fs.copyFileSync(agent11, new PackagePool(poolDir()).pathOf(sha));
  const a = path.join(out, 'a1.img');
  const b = path.join(out, 'b.img');
  ibuOk(['build', '--spec', spec, '--lock', path.join(app, 'product-1.1.lock'), '--version', '2026.12.2', '--out', b, '--previous', a]);

  // The bound comes from what changed: the files' own bytes, plus 4 KiB of metadata per path
  // (directory blocks, inodes, extent trees) and 256 KiB for the superblock, bitmaps and journal.
  const d = diffImageFiles(a, b);
  const rb = Ext4Reader.open(b);
  let bytes = 0;
  try {
    for (const p of [...d.added, ...d.changed]) {
      const e = rb.stat(p);
      if (e.type === 'file') bytes += e.size;
    }
  } finally {
    rb.close();
  }
  const paths = d.added.length + d.changed.length + d.removed.length;
  const bound = bytes + paths * 4096 + 256 * 1024;
  assert.ok(d.changed.includes('/usr/share/acme/VERSION'), `changed: ${d.changed.join(' ')}`);
  assert.ok(paths < 60, `only the package's files, dpkg's records and the release files change: ${[...d.added, ...d.changed, ...d.removed].join(' ')}`);
  const delta = path.join(out, 'a-b.ibudelta');
  ibuOk(['delta', 'make', '--from', a, '--to', b, '--out', delta]);
  const size = fs.statSync(delta).size;
  process.stderr.write(`# delta ${size} B for ${paths} changed paths (${bytes} B of file data), bound ${bound} B\n`);
  assert.ok(size <= bound, `delta ${size} B exceeds the bound ${bound} B`);
  const applied = path.join(work, 'applied.img');
  ibuOk(['delta', 'apply', '--from', a, '--delta', delta, '--out', applied]);
  assert.equal(execFileSync('sha256sum', [applied]).toString().split(' ')[0], execFileSync('sha256sum', [b]).toString().split(' ')[0]);
});

test('bad input: each a stable code and no image file in the output', () => {
  const before = imgs();
  const args = (s: string, l = lockFile, o = 'bad.img'): string[] => ['build', '--spec', s, '--lock', l, '--version', '2026.12.9', '--out', path.join(out, o)];
  const variant = (name: string, edit: (t: string) => string): string => {
    const f = path.join(app, name);
    fs.writeFileSync(f, edit(fs.readFileSync(spec, 'utf8')));
    return f;
  };
  // a typo in the spec
  ibuFails(
    args(variant('typo.yaml', (t) => t.replace('\npackages:', '\npakages:'))),
    'SPEC_INVALID',
    2,
    /line \d+: pakages: unknown key \(did you mean 'packages'\?\)/,
  );
  // a vendor .deb that is not a package
  fs.mkdirSync(path.join(app, 'broken'));
  fs.writeFileSync(path.join(app, 'broken', 'junk_1.0_all.deb'), 'not an ar archive');
  const junk = variant('junk.yaml', (t) => t.replace('vendor-debs: [vendor]', 'vendor-debs: [broken]'));
  ibuFails(['build', 'lock', '--spec', junk, '--out', path.join(work, 'junk.lock')], 'VENDOR_DEB_INVALID', 3, /junk_1\.0_all\.deb/);
  // an unreachable mirror
  const dead = variant('dead.yaml', (t) => t.replace(/http:\/\/deb\.debian\.org\/debian-security/, 'http://127.0.0.1:9/debian-security'));
  ibuFails(['build', 'lock', '--spec', dead, '--out', path.join(work, 'dead.lock')], 'MIRROR_UNREACHABLE', 8, /127\.0\.0\.1:9/);
  // a locked version in neither the pool nor the mirror
  const gone = {
    ...lock,
    packages: lock.packages.map((p) =>
      p.name === 'adduser' ? { ...p, version: '0.0-gone', sha256: 'f'.repeat(64), filename: 'pool/main/a/adduser/adduser_0.0-gone_all.deb' } : p,
    ),
  };
  fs.writeFileSync(path.join(work, 'gone.lock'), serializeLock(gone));
  ibuFails(args(spec, path.join(work, 'gone.lock')), 'PACKAGE_MISSING', 5, /adduser 0\.0-gone/);
  // a spec whose package set changed since the lock
  ibuFails(args(variant('more.yaml', (t) => t.replace('  - udev\n', '  - udev\n  - less\n'))), 'LOCK_MISMATCH', 4, /--update/);
  // an unknown package (apt says so after reading the archive's lists)
  const unknown = variant('unknown.yaml', (t) => t.replace('  - udev\n', '  - udev\n  - no-such-package-ibu\n'));
  ibuFails(['build', 'lock', '--spec', unknown, '--out', path.join(work, 'unknown.lock')], 'PACKAGE_UNKNOWN', 5, /no-such-package-ibu/);
  // a hook that fails: its exit status and the end of its log
  fs.writeFileSync(path.join(app, 'hooks', 'fail.sh'), '#!/bin/sh\necho "preparing the widget"\necho "widget broke" >&2\nexit 3\n', { mode: 0o755 });
  const failing = variant('fail.yaml', (t) => t.replace('hooks: [hooks/10-motd.sh]', 'hooks: [hooks/10-motd.sh, hooks/fail.sh]'));
  ibuFails(args(failing), 'HOOK_FAILED', 7, /fail\.sh failed with exit status 3[\s\S]*widget broke/);
  assert.deepEqual(imgs(), before, 'no image file left behind');
});
