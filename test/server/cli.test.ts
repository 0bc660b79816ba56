import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Agent, request } from 'undici';
import { parseListen } from '../../src/cli/commands/serve.js';
import { run } from '../../src/util/exec.js';
import { cliCommand, publisher, tmpDir, waitFor } from './helpers.js';

function startCli(args: string[]): { child: ChildProcess; out: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [...cliCommand(), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, out: () => out, exit };
}

describe('ibu serve command: options, TLS, graceful shutdown', () => {
  const work = tmpDir('cli');
  const store = path.join(work, 'store');
  const big = 'a'.repeat(64);
  const SIZE = 64 * 1024 * 1024;
  const children: ChildProcess[] = [];

  before(async () => {
    const pub = await publisher(store, work);
    await pub.publish('1.0.1');
    // A large stored object so a download is still running when the signal comes. The server
    // serves stored bytes as they are (clients verify), so any bytes do for this test.
    await fsp.mkdir(path.join(store, 'chunks', 'aaaa'), { recursive: true });
    const fh = await fsp.open(path.join(store, 'chunks', 'aaaa', `${big}.zst`), 'w');
    await fh.truncate(SIZE);
    await fh.write(Buffer.from('end'), 0, 3, SIZE - 3);
    await fh.close();
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      path.join(work, 'key.pem'),
      '-out',
      path.join(work, 'cert.pem'),
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
    ]);
  });
  after(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    await fsp.rm(work, { recursive: true, force: true });
  });

  it('parses --listen', () => {
    assert.deepEqual(parseListen('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
    assert.deepEqual(parseListen('[::1]:8443'), { host: '::1', port: 8443 });
    assert.deepEqual(parseListen(':8080'), { host: '0.0.0.0', port: 8080 });
    assert.throws(() => parseListen('8080'), { code: 'USAGE' });
    assert.throws(() => parseListen('host:99999'), { code: 'USAGE' });
  });

  it('reports every bad option at once with exit status 2', async () => {
    const p = startCli([
      'serve',
      '--data',
      store,
      '--listen',
      'nope',
      '--workers',
      '-1',
      '--delta-quota',
      'lots',
      '--tls-cert',
      'x.pem',
      '--max-queued-deltas',
      '0',
    ]);
    children.push(p.child);
    assert.equal(await p.exit, 2);
    const out = p.out();
    for (const what of ['--listen', '--workers', 'not a size', '--tls-key', '--max-queued-deltas'])
      assert.ok(out.includes(what), `missing '${what}' in: ${out}`);
  });

  it('serves HTTPS and, on SIGTERM, finishes the download in flight, then exits 0', async () => {
    const p = startCli([
      'serve',
      '--data',
      store,
      '--listen',
      '127.0.0.1:0',
      '--tls-cert',
      path.join(work, 'cert.pem'),
      '--tls-key',
      path.join(work, 'key.pem'),
      '--no-fleet',
      '--precompute',
      '0',
    ]);
    children.push(p.child);
    const base = await waitFor('listening', () => /listening at (https:\/\/127\.0\.0\.1:\d+)/.exec(p.out())?.[1], 60_000);
    // The test's own CA is the self-signed certificate.
    const agent = new Agent({ connect: { ca: await fsp.readFile(path.join(work, 'cert.pem')) } });
    const list = await request(`${base}/v1/channels/stable/releases`, { dispatcher: agent });
    assert.equal(list.statusCode, 200);
    assert.equal(((await list.body.json()) as { releases: unknown[] }).releases.length, 1);

    const res = await request(`${base}/v1/chunks/${big}`, { dispatcher: agent });
    assert.equal(res.statusCode, 200);
    const it = res.body[Symbol.asyncIterator]();
    let got = ((await it.next()).value as Buffer).length;
    p.child.kill('SIGTERM');
    await waitFor('shutting down', () => (p.out().includes('shutting down') ? true : undefined));
    let last: Buffer = Buffer.alloc(0);
    for (let n = await it.next(); !n.done; n = await it.next()) {
      got += (n.value as Buffer).length;
      last = n.value as Buffer;
    }
    assert.equal(got, SIZE);
    assert.equal(last.subarray(-3).toString(), 'end');
    assert.equal(await p.exit, 0);
    await agent.close();
  });
});
