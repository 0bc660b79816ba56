/** `ibu image ls` and `ibu image cat` on a real mke2fs image, run as a real child process. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { makeTree, mkfs, seededBytes, tempDir } from '../helpers/ext4-images.js';
import { ibuCommand, runIbu } from '../helpers/cli.js';

const work = tempDir('ibu-ext4-cli');
let img: string;
const big = seededBytes(3 * 1024 * 1024 + 17, 5);

before(() => {
  const t = path.join(work, 't');
  fs.mkdirSync(t);
  makeTree(t, {
    etc: { type: 'dir', children: { hostname: 'box\n', 'os-release': 'ID=debian\n', passwd: { type: 'file', content: 'root:x:0:0\n', mode: 0o640 } } },
    usr: { type: 'dir', children: { lib: { type: 'dir', children: { 'big.so': big, 'libz.so.1': { type: 'symlink', target: 'big.so' } } } } },
    'Ünïcödé name': 'u\n',
    empty: '',
  });
  img = mkfs(t, path.join(work, 'a.img'), { size: 16 * 1024 * 1024, blockSize: 4096 });
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

describe('ibu image ls', () => {
  it('prints a JSON array with path, type, size and the rest', () => {
    const r = runIbu(['image', 'ls', img, '/etc', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout.toString());
    assert.deepEqual(
      list.map((e: { path: string }) => e.path),
      ['/etc/hostname', '/etc/os-release', '/etc/passwd'],
    );
    assert.deepEqual(
      { ...list[2], mtime: 0, ino: 0 },
      { path: '/etc/passwd', ino: 0, type: 'file', mode: 0o640, uid: 0, gid: 0, size: 11, mtime: 0, nlink: 1 },
    );
  });

  it('lists recursively, matching the reader walk', () => {
    const r = runIbu(['image', 'ls', img, '-R', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout.toString()) as Array<{ path: string; type: string; target?: string }>;
    const reader = Ext4Reader.open(img);
    try {
      assert.deepEqual(
        list.map((e) => e.path),
        [...reader.walk()].slice(1).map((e) => e.path),
      );
    } finally {
      reader.close();
    }
    assert.equal(list.find((e) => e.path === '/usr/lib/libz.so.1')?.target, 'big.so');
    assert.ok(list.some((e) => e.path === '/Ünïcödé name'));
  });

  it('prints a readable long listing, and one entry for a file', () => {
    const r = runIbu(['image', 'ls', img, '/usr/lib']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.toString().trimEnd().split('\n');
    assert.match(lines[0]!, /^-rw-r--r-- +1 +0 +0 +3145745 \d{4}-\d\d-\d\d \d\d:\d\d \/usr\/lib\/big\.so$/);
    assert.match(lines[1]!, /^lrwxrwxrwx .* \/usr\/lib\/libz\.so\.1 -> big\.so$/);
    const one = runIbu(['image', 'ls', img, '/etc/passwd', '--json']);
    assert.equal(JSON.parse(one.stdout.toString()).length, 1);
  });

  it('fails with clear codes on a missing path and a bad image', () => {
    const missing = runIbu(['image', 'ls', img, '/nope']);
    assert.equal(missing.code, 5);
    assert.match(missing.stderr, /error\[IMAGE_PATH_NOT_FOUND\]: \/nope does not exist in the image/);
    const junk = path.join(work, 'junk.img');
    fs.writeFileSync(junk, seededBytes(100_000, 9));
    const bad = runIbu(['image', 'ls', junk, '--json']);
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /error\[IMAGE_INVALID\]: .*not an ext4 filesystem/);
    assert.equal(JSON.parse(bad.stdout.toString()).error.code, 'IMAGE_INVALID');
  });
});

describe('ibu image cat', () => {
  it('writes the exact bytes of a multi-MiB file, following symlinks', () => {
    const r = runIbu(['image', 'cat', img, '/usr/lib/libz.so.1']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(big));
    assert.equal(runIbu(['image', 'cat', img, '/etc/hostname']).stdout.toString(), 'box\n');
    assert.equal(runIbu(['image', 'cat', img, '/empty']).stdout.length, 0);
  });

  it('stops quietly when the reader goes away (EPIPE)', () => {
    const cmd = ibuCommand(['image', 'cat', img, '/usr/lib/big.so'])
      .map((a) => `'${a.replace(/'/g, `'\\''`)}'`)
      .join(' ');
    const r = spawnSync('bash', ['-c', `${cmd} | head -c 10 > /dev/null; echo "status=\${PIPESTATUS[0]}"`], { encoding: 'utf8' });
    assert.match(r.stdout, /status=0/);
    assert.doesNotMatch(r.stderr, /EPIPE|error/);
  });

  it('refuses a directory and a missing file with their codes', () => {
    const dir = runIbu(['image', 'cat', img, '/etc']);
    assert.equal(dir.code, 2);
    assert.match(dir.stderr, /error\[USAGE\]: \/etc in the image is a directory/);
    assert.equal(runIbu(['image', 'cat', img, '/etc/nope']).code, 5);
  });
});
