import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXIT } from '../../src/cli/exit-codes.js';
import { runIbu } from '../helpers/cli.js';
import { binaryish, imageJson, makeImage, mutate, tempDir, writeTree } from './fixture.js';

// `ibu delta make|apply|info` as a user runs them: real child processes, exit statuses, JSON.

describe('ibu delta CLI', () => {
  const tmp = tempDir();
  const p = (n: string) => path.join(tmp.dir, n);

  before(async () => {
    const app = binaryish(1, 200_000);
    writeTree(p('ta'), { 'etc/ibu/image.json': imageJson('5'), 'usr/bin/app': app });
    writeTree(p('tb'), { 'etc/ibu/image.json': imageJson('6'), 'usr/bin/app': mutate(app, 2) });
    await makeImage(p('ta'), p('a.img'), { size: '8M' });
    await makeImage(p('tb'), p('b.img'), { size: '8M' });
  });
  after(() => tmp.cleanup());

  it('makes, describes and applies a delta', () => {
    const made = runIbu(['delta', 'make', '--from', p('a.img'), '--to', p('b.img'), '--out', p('ab.ibudelta'), '--json']);
    assert.equal(made.code, 0, made.stderr);
    const stats = JSON.parse(made.stdout.toString()) as { bytes: number; fromVersion: string; toVersion: string };
    assert.equal(stats.bytes, fs.statSync(p('ab.ibudelta')).size);
    assert.deepEqual([stats.fromVersion, stats.toVersion], ['5', '6']);

    const info = runIbu(['delta', 'info', p('ab.ibudelta'), '--json']);
    assert.equal(info.code, 0, info.stderr);
    assert.equal((JSON.parse(info.stdout.toString()) as { toVersion: string }).toVersion, '6');

    const applied = runIbu(['delta', 'apply', '--from', p('a.img'), '--delta', p('ab.ibudelta'), '--out', p('b2.img'), '--to-version', '6', '--json']);
    assert.equal(applied.code, 0, applied.stderr);
    assert.ok(fs.readFileSync(p('b2.img')).equals(fs.readFileSync(p('b.img'))));
  });

  it('maps delta errors to exit statuses with the code on stderr', () => {
    const good = fs.readFileSync(p('ab.ibudelta'));
    fs.writeFileSync(p('cut.ibudelta'), good.subarray(0, good.length - 10));
    const cut = runIbu(['delta', 'apply', '--from', p('a.img'), '--delta', p('cut.ibudelta'), '--out', p('x.img')]);
    assert.equal(cut.code, EXIT.INVALID_INPUT);
    assert.match(cut.stderr, /error\[DELTA_TRUNCATED\]/);
    assert.equal(fs.existsSync(p('x.img')), false);

    const pair = runIbu(['delta', 'apply', '--from', p('a.img'), '--delta', p('ab.ibudelta'), '--out', p('x.img'), '--to-version', '7']);
    assert.equal(pair.code, EXIT.VERIFY_FAILED);
    assert.match(pair.stderr, /error\[DELTA_WRONG_PAIR\]/);

    const usage = runIbu(['delta', 'apply', '--from', p('a.img'), '--delta', p('ab.ibudelta'), '--out', p('x.img'), '--fallback-store', p('store')]);
    assert.equal(usage.code, EXIT.USAGE);
    assert.match(usage.stderr, /--keyring/);
  });
});
