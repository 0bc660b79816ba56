import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { LockedPackage } from '../../src/build/lock-file.js';
import { PackagePool } from '../../src/build/package-pool.js';
import { IbuError } from '../../src/errors.js';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ibu-pool-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

// A mirror on port 0 that serves two files, one of them not what the lock says.
const files: Record<string, Buffer> = {
  '/debian/pool/main/h/hello_1_all.deb': Buffer.from('hello deb'),
  '/debian/pool/main/e/evil_1_all.deb': Buffer.from('evil'),
};
const server = http.createServer((req, res) => {
  const body = files[req.url ?? ''];
  res.writeHead(body ? 200 : 404).end(body);
});
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
after(() => server.close());
const uri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/debian`;
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const locked = (name: string, sha256: string, origin: 'mirror' | 'vendor' = 'mirror'): LockedPackage => ({
  name,
  version: '1',
  architecture: 'all',
  size: 1,
  sha256,
  origin,
  uri: origin === 'mirror' ? uri : null,
  filename: origin === 'mirror' ? `pool/main/${name[0]}/${name}_1_all.deb` : null,
  priority: 'optional',
  section: 'misc',
});

test('fill downloads what the pool lacks, stores it under its sha256, and skips what it has', async () => {
  const pool = new PackagePool(path.join(work, 'a'));
  const hello = locked('hello', sha('hello deb'));
  assert.equal(await pool.fill([hello]), 1);
  assert.equal(fs.readFileSync(pool.pathOf(hello.sha256), 'utf8'), 'hello deb');
  assert.match(pool.pathOf(hello.sha256), new RegExp(`/sha256/${hello.sha256.slice(0, 2)}/${hello.sha256}\\.deb$`));
  assert.equal(await pool.fill([hello]), 0);
  await pool.verify(hello);
});

test('a download with the wrong hash never enters the pool; missing versions are listed together', async () => {
  const pool = new PackagePool(path.join(work, 'b'));
  const evil = locked('evil', sha('not evil'));
  await assert.rejects(pool.fill([evil]), (e) => e instanceof IbuError && e.code === 'PACKAGE_HASH_MISMATCH');
  assert.equal(pool.has(evil.sha256), false);
  assert.deepEqual(fs.readdirSync(path.join(work, 'b', 'sha256', evil.sha256.slice(0, 2))), []);
  const gone = [locked('gone', sha('x')), locked('vendor-thing', sha('y'), 'vendor')];
  await assert.rejects(pool.fill(gone), (e) => {
    assert.ok(e instanceof IbuError && e.code === 'PACKAGE_MISSING');
    assert.match(e.message, /2 locked package versions are in neither the pool[\s\S]*gone 1[\s\S]*vendor-thing 1 \(a vendor package/);
    return true;
  });
});

test('an unreachable mirror is MIRROR_UNREACHABLE', async () => {
  const pool = new PackagePool(path.join(work, 'c'));
  const p = { ...locked('hello', sha('z')), uri: 'http://127.0.0.1:9/debian' };
  await assert.rejects(pool.fill([p]), (e) => e instanceof IbuError && e.code === 'MIRROR_UNREACHABLE');
});
