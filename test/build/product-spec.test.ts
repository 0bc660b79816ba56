import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseProductSpec, parseSizeText } from '../../src/build/product-spec.js';
import { IbuError } from '../../src/errors.js';

const MIN = 'product: box\nsuite: trixie\nimage:\n  size: 1G\n';

function problems(text: string): string[] {
  try {
    parseProductSpec(text);
  } catch (err) {
    assert.ok(err instanceof IbuError);
    assert.equal(err.code, 'SPEC_INVALID');
    return err.details!.problems as string[];
  }
  assert.fail('expected SPEC_INVALID');
}

test('the example appliance spec parses with its defaults filled in', () => {
  const spec = parseProductSpec(readFileSync('examples/appliance/product.yaml', 'utf8'));
  assert.equal(spec.product, 'acme-box');
  assert.equal(spec.suite, 'trixie');
  assert.equal(spec.variant, 'minbase');
  assert.deepEqual(spec.mirrors[1], { uri: 'http://deb.debian.org/debian-security', suites: ['trixie-security'], components: ['main'] });
  assert.equal(spec.kernel, 'linux-image-amd64');
  assert.deepEqual(spec.systemd.mask, ['apt-daily.timer', 'apt-daily-upgrade.timer']);
  assert.equal(spec.image.size, 1024 ** 3);
  assert.equal(spec.users[0]!.group, 'acme');
  assert.equal(spec.sourceDateEpoch, null);
});

test('a minimal spec gets the Debian mirror, main, minbase and the arch kernel', () => {
  const spec = parseProductSpec(MIN);
  assert.deepEqual(spec.mirrors, [{ uri: 'http://deb.debian.org/debian', suites: ['trixie'], components: ['main'] }]);
  assert.equal(spec.kernel, 'linux-image-amd64');
  assert.equal(spec.hostname, 'debian');
  assert.deepEqual(parseProductSpec(MIN + 'kernel: null\n').kernel, null);
  assert.equal(spec.readonly, false);
});

test('readonly: true marks a read-only image; anything but a boolean is a problem with its line', () => {
  assert.equal(parseProductSpec(MIN + 'readonly: true\n').readonly, true);
  assert.deepEqual(problems(MIN + 'readonly: yes please\n'), ['line 5: readonly: must be true or false']);
});

test('every problem is listed at once, each with its line, unknown keys and typos included', () => {
  const text = [
    'product: box', // 1
    'suite: sid', // 2
    'pakages: [vim]', // 3
    'image:', // 4
    '  size: lots', // 5
    'users:', // 6
    '  - name: Bad User', // 7
    '    groups: [nosuchgroup]', // 8
    'systemd:', // 9
    '  enable: [ssh.service]', // 10
    '  mask: [ssh.service, notaunit]', // 11
    'mirrors:', // 12
    '  - uri: ftp://x', // 13
    '    sutes: [a]', // 14
  ].join('\n');
  const p = problems(text);
  const want = [
    /^line 2: suite: 'sid' is not one of trixie, bookworm/,
    /^line 3: pakages: unknown key \(did you mean 'packages'\?\)/,
    /^line 5: image.size: 'lots' is not a size/,
    /^line 7: users\[0\].name: 'Bad User' is not valid/,
    /^line 11: systemd.mask\[1\]: 'notaunit' is not valid/,
    /^line 11: systemd.mask: 'ssh.service' is both enabled and masked/,
    /^line 13: mirrors\[0\].uri: 'ftp:\/\/x' is not valid/,
    /^line 14: mirrors\[0\].sutes: unknown key \(did you mean 'suites'\?\)/,
  ];
  for (const re of want)
    assert.ok(
      p.some((l) => re.test(l)),
      `missing ${re} in:\n${p.join('\n')}`,
    );
  assert.equal(p.length, want.length, p.join('\n'));
});

test('missing required keys and YAML syntax errors are reported with lines', () => {
  const p = problems('distribution: debian\n');
  assert.ok(p.some((l) => /^line 1: product: missing/.test(l)));
  assert.ok(p.some((l) => /^line 1: suite: missing/.test(l)));
  assert.ok(p.some((l) => /image: missing/.test(l)));
  const y = problems('product: box\nsuite: [trixie\nimage: {}\n');
  assert.ok(
    y.every((l) => /^line \d+: YAML: /.test(l)),
    y.join('\n'),
  );
  assert.ok(problems('product: a\nproduct: b\nsuite: trixie\nimage: {size: 1G}\n').some((l) => /line 2: YAML: .*unique/i.test(l)));
});

test('users may only join declared or Debian base groups; duplicates are caught', () => {
  const ok = parseProductSpec(MIN + 'groups: [{name: acme, gid: 2000}]\nusers: [{name: acme, groups: [acme, sudo]}]\n');
  assert.deepEqual(ok.users[0]!.groups, ['acme', 'sudo']);
  const p = problems(MIN + 'packages: [a, a]\ngroups: [{name: g}, {name: g}]\nusers: [{name: u, groups: [zz]}]\n');
  assert.equal(p.length, 3, p.join('\n'));
});

test('sizes take binary suffixes', () => {
  assert.equal(parseSizeText('2G'), 2 * 1024 ** 3);
  assert.equal(parseSizeText('512MiB'), 512 * 1024 ** 2);
  assert.equal(parseSizeText('1048576'), 1048576);
  assert.equal(parseSizeText('two'), null);
});
