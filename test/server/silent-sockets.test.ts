import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

// Issue #15 item 4: a server with a small fd limit keeps answering devices while hundreds of
// sockets stay silent (idle connections are closed; they no longer hold every descriptor).
const dist = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');

function ask(port: number, ms: number): Promise<number> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('GET /v1/channels/stable/releases HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    let buf = '';
    const done = (v: number) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(0), ms);
    s.on('data', (d) => {
      buf += d.toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(buf);
      if (m) done(Number(m[1]));
    });
    s.on('error', () => done(0));
  });
}

test('300 silent sockets against a 128-fd server: a device request still answers', { timeout: 90_000 }, async () => {
  const data = mkdtempSync(path.join(os.tmpdir(), 'ibu-silent-'));
  const script =
    `const { createServer } = await import(${JSON.stringify(dist + '/src/server/app.js')});` +
    `const s = await createServer({ dataDir: ${JSON.stringify(data)}, logger: false, rescanIntervalMs: 0, precompute: 0,` +
    ` connections: { idleMs: 2000, headersMs: 2000 } });` +
    `await s.app.listen({ host: '127.0.0.1', port: 0 }); console.log('PORT ' + s.app.server.address().port);`;
  const child = spawn('sh', ['-c', `ulimit -n 128 && exec "${process.execPath}" --input-type=module -e "$0"`, script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const sockets: net.Socket[] = [];
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /PORT (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.on('exit', (c) => reject(new Error(`server exited ${c}`)));
    });
    assert.equal(await ask(port, 5000), 404, 'answers before the flood');
    for (let i = 0; i < 300; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => {});
      sockets.push(s);
    }
    await new Promise((r) => setTimeout(r, 500));
    let status = 0;
    const until = Date.now() + 30_000;
    while (status === 0 && Date.now() < until) status = await ask(port, 3000);
    assert.equal(status, 404, 'a device request answered while the silent sockets stay open on the client side');
  } finally {
    for (const s of sockets) s.destroy();
    child.kill('SIGKILL');
    rmSync(data, { recursive: true, force: true });
  }
});
