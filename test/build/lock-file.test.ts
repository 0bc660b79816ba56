import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareDebianVersions, diffPackages, formatPackageChanges, parseLock, serializeLock, type ProductLock } from '../../src/build/lock-file.js';
import { aptListPrefix, deb822Sources, mirrorOfListFile, parseReleaseFields, suiteOfListFile } from '../../src/build/archive-release.js';
import { diffFileKeys, formatReleaseDiff, packageChanges } from '../../src/build/release-diff.js';
import { packagesJson, parseReleasePackages } from '../../src/build/release-packages.js';
import { IbuError } from '../../src/errors.js';

const sha = (c: string): string => c.repeat(64);
const pkg = (name: string, version: string, s = 'a') => ({
  name,
  version,
  architecture: 'amd64',
  size: 10,
  sha256: sha(s),
  origin: 'mirror' as const,
  uri: 'http://deb.debian.org/debian',
  filename: `pool/main/${name}.deb`,
  priority: 'optional',
  section: 'misc',
});
const lock: ProductLock = {
  format: 1,
  product: 'box',
  suite: 'trixie',
  architecture: 'amd64',
  specDigest: sha('d'),
  archives: [{ uri: 'http://deb.debian.org/debian', suite: 'stable', codename: 'trixie', date: 'Sat, 21 Nov 2026 09:15:44 UTC', sha256: sha('e') }],
  packages: [pkg('zlib1g', '1:1.3.dfsg-3'), pkg('bash', '5.2.37-2')],
};

test('a lock serialises stably (sorted, one package per line) and parses back', () => {
  const text = serializeLock(lock);
  assert.equal(serializeLock(parseLock(text)), text);
  assert.ok(text.indexOf('"bash"') < text.indexOf('"zlib1g"'));
  assert.equal(text.split('\n').filter((l) => l.includes('"name"')).length, 2);
});

test('a malformed lock is LOCK_INVALID', () => {
  for (const bad of ['{', '{"format":2}', serializeLock(lock).replace(sha('a'), 'nothex')]) {
    assert.throws(
      () => parseLock(bad),
      (e) => e instanceof IbuError && e.code === 'LOCK_INVALID',
    );
  }
});

test('Debian version order: epochs, tildes, digit runs, revisions', () => {
  const ordered = ['1.0~rc1', '1.0', '1.0-1', '1.0-1+deb13u1', '1.0.1', '1.10', '1:0.1'];
  for (let i = 0; i + 1 < ordered.length; i++) {
    assert.equal(compareDebianVersions(ordered[i]!, ordered[i + 1]!), -1, `${ordered[i]} < ${ordered[i + 1]}`);
    assert.equal(compareDebianVersions(ordered[i + 1]!, ordered[i]!), 1);
  }
  assert.equal(compareDebianVersions('2.36-9+deb12u14', '2.36-9+deb12u14'), 0);
  assert.equal(compareDebianVersions('2.36-9+deb12u9', '2.36-9+deb12u14'), -1);
});

test('package changes: upgraded, downgraded, added, removed, rebuilt', () => {
  const before = [pkg('a', '1.0'), pkg('b', '2.0'), pkg('c', '1'), pkg('d', '1', 'a')];
  const after = [pkg('a', '1.1'), pkg('b', '1.9'), pkg('e', '3'), pkg('d', '1', 'b')];
  const ch = diffPackages(before, after);
  assert.deepEqual(
    ch.map((c) => `${c.kind} ${c.name}`),
    ['upgraded a', 'downgraded b', 'removed c', 'rebuilt d', 'added e'],
  );
  assert.deepEqual(formatPackageChanges(ch), ['  ~ a 1.0 -> 1.1', '  ~ b 2.0 -> 1.9 (downgraded)', '  - c 1', '  ~ d 1 -> 1 (rebuilt)', '  + e 3']);
});

test('apt list names map back to their mirror and suite; Release fields are read through the PGP armour', () => {
  const mirrors = [
    { uri: 'http://deb.debian.org/debian', suites: ['trixie', 'trixie-updates'], components: ['main'] },
    { uri: 'http://deb.debian.org/debian-security', suites: ['trixie-security'], components: ['main'] },
  ];
  assert.equal(aptListPrefix('http://deb.debian.org/debian/'), 'deb.debian.org_debian_dists_');
  const sec = 'deb.debian.org_debian-security_dists_trixie-security_main_binary-amd64_Packages';
  assert.equal(mirrorOfListFile(sec, mirrors), mirrors[1]);
  assert.equal(suiteOfListFile('deb.debian.org_debian_dists_trixie-updates_InRelease', mirrors[0]!), 'trixie-updates');
  assert.equal(mirrorOfListFile('_tmp_x_._Packages', mirrors), undefined);
  const r = parseReleaseFields(
    '-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nSuite: stable\nCodename: trixie\nDate: Sat, 21 Nov 2026 09:15:44 UTC\n',
  );
  assert.deepEqual(r, { origin: 'Debian', suite: 'stable', codename: 'trixie', date: 'Sat, 21 Nov 2026 09:15:44 UTC' });
  assert.match(deb822Sources(mirrors), /^Types: deb\nURIs: http:\/\/deb.debian.org\/debian\nSuites: trixie trixie-updates\nComponents: main\n/);
});

test('release diff: package groups from the package lists, files by content key', () => {
  const a = parseReleasePackages(packagesJson(lock), 'a');
  const lock2 = { ...lock, packages: [pkg('zlib1g', '1:1.3.dfsg-3+deb13u1'), pkg('acme', '1.0')] };
  const b = parseReleasePackages(packagesJson(lock2), 'b');
  const p = packageChanges(a, b)!;
  assert.deepEqual(
    p.upgraded.map((c) => c.name),
    ['zlib1g'],
  );
  assert.deepEqual(
    p.added.map((c) => c.name),
    ['acme'],
  );
  assert.deepEqual(
    p.removed.map((c) => c.name),
    ['bash'],
  );
  assert.equal(packageChanges(a, null), null);
  const files = diffFileKeys(
    new Map([
      ['/a', 'x'],
      ['/b', 'y'],
    ]),
    new Map([
      ['/b', 'z'],
      ['/c', 'w'],
    ]),
  );
  assert.deepEqual(files, { added: ['/c'], removed: ['/a'], changed: ['/b'] });
  const text = formatReleaseDiff({ from: '1', to: '2', packages: p, files }).join('\n');
  assert.match(text, /packages: 1 upgraded, 1 added, 1 removed/);
  assert.match(text, /files: 1 changed, 1 added, 1 removed/);
});
