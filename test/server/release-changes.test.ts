import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import type { ProductLock } from '../../src/build/lock-file.js';
import { packagesJson } from '../../src/build/release-packages.js';
import { runIbu } from '../helpers/cli.js';
import { get, publisher, releaseTree, start, tmpDir, type Running } from './helpers.js';

// Package lists as `ibu build` puts them in /etc/ibu/packages.json, in two small published releases.
const pkg = (name: string, version: string) => ({
  name,
  version,
  architecture: 'amd64',
  size: 1,
  sha256: 'a'.repeat(64),
  origin: 'mirror' as const,
  uri: null,
  filename: null,
  priority: 'optional',
  section: 'misc',
});
const lock = (packages: ReturnType<typeof pkg>[]): ProductLock => ({
  format: 1,
  product: 'box',
  suite: 'trixie',
  architecture: 'amd64',
  specDigest: 'd'.repeat(64),
  archives: [],
  packages,
});
const v1 = packagesJson(lock([pkg('openssl', '3.5.1-1'), pkg('bash', '5.2.37-2'), pkg('old-tool', '1')]));
const v2 = packagesJson(lock([pkg('openssl', '3.5.1-1+deb13u1'), pkg('bash', '5.2.37-2'), pkg('acme-agent', '1.1')]));

describe('release changes: GET /v1/releases/:v/changes and ibu release diff', () => {
  const work = tmpDir('release-changes');
  const store = path.join(work, 'store');
  let srv: Running;
  let img1 = '';
  let img2 = '';

  before(async () => {
    const pub = await publisher(store, work);
    img1 = await pub.publish('1.0.1', { ...releaseTree(1), 'etc/ibu/packages.json': v1 });
    img2 = await pub.publish('1.0.2', { ...releaseTree(2), 'etc/ibu/packages.json': v2 });
    srv = await start({ dataDir: store, precompute: 0 });
  });
  after(async () => {
    await srv?.close();
  });

  it('answers the package changes against the previous release of the channel, and the file summary', async () => {
    const res = await get(`${srv.url}/v1/releases/1.0.2/changes`);
    assert.equal(res.status, 200);
    const d = JSON.parse(res.body.toString()) as {
      from: string;
      packages: Record<string, { name: string; from: string | null; to: string | null }[]>;
      files: { counts: Record<string, number>; changed: string[] };
    };
    assert.equal(d.from, '1.0.1');
    assert.deepEqual(
      d.packages.upgraded!.map((c) => `${c.name} ${c.from} ${c.to}`),
      ['openssl 3.5.1-1 3.5.1-1+deb13u1'],
    );
    assert.deepEqual(
      d.packages.added!.map((c) => c.name),
      ['acme-agent'],
    );
    assert.deepEqual(
      d.packages.removed!.map((c) => c.name),
      ['old-tool'],
    );
    assert.ok(d.files.changed.includes('/usr/bin/app') && d.files.changed.includes('/etc/ibu/packages.json'));
    assert.equal(d.files.counts.added, 1);
    const first = JSON.parse((await get(`${srv.url}/v1/releases/1.0.1/changes`)).body.toString()) as { from: null; packages: { added: unknown[] } };
    assert.equal(first.from, null);
    assert.equal(first.packages.added.length, 3);
    assert.equal((await get(`${srv.url}/v1/releases/9.9.9/changes`)).status, 404);
    assert.equal((await get(`${srv.url}/v1/releases/1.0.2/changes?from=..%2Fx`)).status, 400);
  });

  it('ibu release diff gives the same changes from two images and from the store', () => {
    for (const args of [
      [img1, img2],
      ['1.0.1', '1.0.2', '--from', store],
    ]) {
      const r = runIbu(['release', 'diff', ...args, '--json']);
      assert.equal(r.code, 0, r.stderr);
      const d = JSON.parse(r.stdout.toString()) as { from: string; to: string; packages: Record<string, unknown[]>; files: { changed: string[] } };
      if (args[0] === '1.0.1') assert.equal(d.to, '1.0.2');
      assert.equal(d.packages.upgraded!.length, 1);
      assert.equal(d.packages.added!.length, 1);
      assert.equal(d.packages.removed!.length, 1);
      assert.ok(d.files.changed.includes('/usr/bin/app'));
    }
    const text = runIbu(['release', 'diff', '1.0.1', '1.0.2', '--from', store]).stdout.toString();
    assert.match(text, /packages: 1 upgraded, 1 added, 1 removed\n {2}\+ acme-agent 1\.1\n {2}- old-tool 1\n {2}~ openssl 3\.5\.1-1 -> 3\.5\.1-1\+deb13u1\n/);
    assert.match(text, /files: \d+ changed, 1 added, 1 removed/);
  });
});
