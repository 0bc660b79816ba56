import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { cli, debugfsCat, makeDevice } from './device.js';

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await fsp.readFile(file))
    .digest('hex');
}

test('prepare → apply → trial boot → confirm commits; configuration migrated into the new image', async () => {
  const dev = await makeDevice({ running: '1.0', releases: [{ version: '1.0' }, { version: '2.0', files: { '/etc/app/new-default.conf': 'x=1\n' } }] });
  try {
    let r = await cli(dev, ['init', '--default', '1.0', '--json']);
    assert.equal(r.code, 0, r.stderr);
    r = await cli(dev, ['status', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.running, '1.0');
    assert.equal(r.json!.committed, '1.0');
    assert.equal(r.json!.trial, false);

    r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.outcome, 'prepared');
    const manifest = JSON.parse(await fsp.readFile(path.join(dev.storeDir, 'releases', '2.0', 'manifest.json'), 'utf8'));
    assert.equal(await sha256(path.join(dev.images, '2.0.img')), manifest.image.sha256);
    // idempotent
    r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
    assert.equal(r.json!.outcome, 'prepared');
    assert.deepEqual(await dev.env(), { ...(await dev.env()), default_image: '1.0' });
    assert.equal((await dev.env()).try_image, undefined, 'prepare never touches the boot state');

    r = await cli(dev, ['apply', '--now', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.outcome, 'rebooting');
    assert.equal((await fsp.readFile(dev.rebootLog, 'utf8')).trim(), 'reboot');
    const env = await dev.env();
    assert.equal(env.default_image, '1.0');
    assert.equal(env.try_image, '2.0');
    const changed = (r.json!.migration as { changed: Array<{ path: string; action: string }> }).changed;
    assert.deepEqual(
      changed.map((c) => `${c.path}:${c.action}`),
      ['/etc/passwd:merged', '/etc/group:merged', '/etc/shadow:merged', '/etc/hostname:copied', '/etc/app:kept-new'],
    );
    const img2 = path.join(dev.images, '2.0.img');
    const passwd = await debugfsCat(img2, '/etc/passwd');
    assert.match(passwd, /^alice:x:1000:1000:/m);
    assert.match(passwd, /^daemon:x:1:1:/m);
    assert.match(await debugfsCat(img2, '/etc/shadow'), /^root:\$6\$salt\$hash:/m);
    assert.match(await debugfsCat(img2, '/etc/group'), /^adm:x:4:alice$/m);
    assert.equal(await debugfsCat(img2, '/etc/hostname'), 'device-42\n');
    assert.equal(await debugfsCat(img2, '/etc/app/new-default.conf'), 'x=1\n');

    assert.equal(await dev.boot(), '2.0');
    r = await cli(dev, ['status', '--json']);
    assert.equal(r.json!.trial, true);
    r = await cli(dev, ['confirm', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.outcome, 'committed');
    assert.equal((await dev.env()).default_image, '2.0');
    r = await cli(dev, ['confirm', '--json']);
    assert.equal(r.json!.outcome, 'not-trial');
  } finally {
    await dev.cleanup();
  }
});

test('verify trusts the staged image its download hashed, and hashes any other file again (a replaced staged image is caught)', async () => {
  const spec = { running: '1.0', releases: [{ version: '1.0' }, { version: '2.0', payloadBytes: 256 * 1024 }] };
  const [a, dev] = [await makeDevice(spec), await makeDevice(spec)];
  try {
    for (const d of [a, dev]) assert.equal((await cli(d, ['init', '--default', '1.0'])).code, 0);
    // On a twin device: the crash point of the verify step, and the skipped second hash.
    const trace = await cli(a, ['prepare', '--version', '2.0'], { IBU_AGENT_CRASH_TRACE: '1' });
    assert.equal(trace.code, 0, trace.stderr);
    assert.match(trace.stderr, /2\.0: the image was hashed against its signed manifest as it was written; not hashing it again/);
    const n = /crash-point (\d+) step verify/.exec(trace.stderr)?.[1];
    assert.ok(n, trace.stderr);
    // Stopped right there: the download is staged and recorded, not verified yet.
    const crashed = await cli(dev, ['prepare', '--version', '2.0'], { IBU_AGENT_CRASH_AT: n, IBU_AGENT_CRASH_TRACE: '1' });
    assert.equal(crashed.signal, 'SIGKILL', crashed.stderr);
    assert.match(crashed.stderr, new RegExp(`crash-point ${n} step verify\\n?$`));
    const staged = path.join(dev.images, '.ibu', 'staging', '2.0.img');
    // Another file takes the staged image's place (same size, one byte changed): its identity differs.
    const bytes = await fsp.readFile(staged);
    bytes[bytes.length >> 1] ^= 0xff;
    await fsp.writeFile(`${staged}.new`, bytes);
    await fsp.rename(`${staged}.new`, staged);
    const caught = await cli(dev, ['prepare', '--version', '2.0', '--json']);
    assert.notEqual(caught.code, 0);
    assert.match(caught.stderr + caught.stdout, /IMAGE_HASH_MISMATCH|does not match its signed manifest/);
    assert.ok(!(await fsp.stat(staged).catch(() => null)), 'the bad staged image was deleted');
    const again = await cli(dev, ['prepare', '--version', '2.0', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.json!.outcome, 'prepared');
  } finally {
    await a.cleanup();
    await dev.cleanup();
  }
});
