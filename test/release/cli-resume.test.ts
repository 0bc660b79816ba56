import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { serveDir } from '../store/serve-dir.js';
import { buildImage, releaseTrees, tmpDir } from './helpers.js';

// Drives the real `ibu` CLI in child processes: keys generate, release publish, release fetch
// (killed with SIGKILL mid-download, then resumed).
const here = fileURLToPath(import.meta.url);
const isTs = here.endsWith('.ts');
const cliModule = path.resolve(path.dirname(here), '../../src/cli', isTs ? 'ibu.ts' : 'ibu.js');
const t = tmpDir('cli');
after(() => t.cleanup());
const d = (p: string) => path.join(t.dir, p);

function ibu(args: string[]): {
  child: ReturnType<typeof spawn>;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
} {
  const child = spawn(
    process.execPath,
    [
      ...(isTs ? ['--import', 'tsx'] : []),
      '--input-type=module',
      '-e',
      `const m = await import(${JSON.stringify('file://' + cliModule)}); await m.main(process.argv.slice(1));`,
      ...args,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b));
  child.stderr!.on('data', (b: Buffer) => (stderr += b));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, done };
}

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

test('ibu release fetch resumes after kill -9 and downloads less the second time', async () => {
  const trees = releaseTrees();
  const img = await buildImage(t.dir, 'b', trees.v2);
  let r = await ibu(['keys', 'generate', '--out', d('keys'), '--json']).done;
  assert.equal(r.code, 0, r.stderr);
  mkdirSync(d('ring'));
  copyFileSync(d('keys/signing.pub'), d('ring/release.pub'));
  r = await ibu([
    'release',
    'publish',
    '--image',
    img,
    '--version',
    '1.0',
    '--store',
    d('store'),
    '--key',
    d('keys/signing.key'),
    '--chunk-size',
    '4K:16K:64K',
    '--json',
  ]).done;
  assert.equal(r.code, 0, r.stderr);
  const published = JSON.parse(r.stdout) as { chunks: number; zeroChunks: number };

  // Throttled server: ~25 ms per chunk, 2 at a time, so the fetch takes seconds and can be killed midway.
  const slow = await serveDir(d('store'), { chunkDelayMs: 25 });
  const out = d('out.img');
  const journal = `${out}.partial.journal`;
  try {
    const first = ibu(['release', 'fetch', '--from', slow.url, '--version', '1.0', '--keyring', d('ring'), '--out', out, '--concurrency', '2', '--json']);
    // Wait until the journal holds some committed chunks, then kill -9.
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (existsSync(journal) && readFileSync(journal, 'utf8').trim().split('\n').length > 20) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    first.child.kill('SIGKILL');
    const killed = await first.done;
    assert.equal(killed.signal, 'SIGKILL', `the first fetch finished before it could be killed: ${killed.stdout}`);
    assert.equal(existsSync(out), false, 'no output image after kill -9');
    assert.ok(existsSync(`${out}.partial`));
    const firstRequests = slow.requests.filter((q) => q.includes('/chunks/')).length;

    const second = await ibu(['release', 'fetch', '--from', slow.url, '--version', '1.0', '--keyring', d('ring'), '--out', out, '--concurrency', '4', '--json'])
      .done;
    assert.equal(second.code, 0, second.stderr);
    const res = JSON.parse(second.stdout) as {
      resumed: boolean;
      resumedChunks: number;
      downloadedChunks: number;
      downloadedBytes: number;
      reusedBytes: number;
    };
    assert.equal(res.resumed, true);
    assert.ok(res.resumedChunks > 10, `resumed ${res.resumedChunks} chunks`);
    const dataChunks = published.chunks - published.zeroChunks;
    assert.ok(res.downloadedChunks < dataChunks, `downloaded ${res.downloadedChunks} of ${dataChunks} chunks the second time`);
    assert.equal(slow.requests.filter((q) => q.includes('/chunks/')).length - firstRequests, res.downloadedChunks);
    assert.ok(res.reusedBytes > 0 && res.downloadedBytes > 0);
    assert.equal(sha(out), sha(img));
    assert.equal(existsSync(`${out}.partial`), false);
    assert.equal(existsSync(journal), false);
    assert.ok(statSync(out).blocks * 512 < statSync(out).size);
  } finally {
    await slow.close();
  }
});

test('the CLI maps a bad signature to its exit status and error code', async () => {
  const r = await ibu(['release', 'fetch', '--from', d('store'), '--version', '9.9', '--keyring', d('ring'), '--out', d('x.img'), '--json']).done;
  assert.equal(r.code, 5); // RELEASE_NOT_FOUND → EXIT.NOT_FOUND
  assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'RELEASE_NOT_FOUND');
});

test('rotation through the CLI: release sign adds a second signature; revoking the first key keeps the release valid', async () => {
  let r = await ibu(['keys', 'generate', '--out', d('keys2'), '--json']).done;
  assert.equal(r.code, 0, r.stderr);
  const key2 = (JSON.parse(r.stdout) as { keyId: string }).keyId;
  const key1 = (await ibu(['keys', 'id', d('keys/signing.pub')]).done).stdout.trim();
  // Before: a keyring with only the new key does not know the release's signer.
  mkdirSync(d('ring2'));
  copyFileSync(d('keys2/signing.pub'), d('ring2/new.pub'));
  r = await ibu(['release', 'verify', '--from', d('store'), '--version', '1.0', '--keyring', d('ring2'), '--json']).done;
  assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'KEY_UNKNOWN');
  r = await ibu(['release', 'sign', '--store', d('store'), '--version', '1.0', '--key', d('keys2/signing.key')]).done;
  assert.equal(r.code, 0, r.stderr);
  // Old ring + new key, old key revoked: verified by the new key.
  copyFileSync(d('keys2/signing.pub'), d('ring/new.pub'));
  r = await ibu(['keys', 'revoke', '--keyring', d('ring'), key1]).done;
  assert.equal(r.code, 0, r.stderr);
  r = await ibu(['release', 'verify', '--from', d('store'), '--version', '1.0', '--keyring', d('ring'), '--json']).done;
  assert.equal(r.code, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as { signedBy: string }).signedBy, key2);
  // Dropping the new signature leaves only the revoked one: KEY_REVOKED, exit status 4.
  r = await ibu(['release', 'sign', '--store', d('store'), '--version', '1.0', '--drop', key2]).done;
  assert.equal(r.code, 0, r.stderr);
  r = await ibu(['release', 'verify', '--from', d('store'), '--version', '1.0', '--keyring', d('ring'), '--json']).done;
  assert.equal(r.code, 4);
  assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'KEY_REVOKED');
});
