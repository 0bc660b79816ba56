/**
 * The agent's HTTP client against the real server: a refusal reaches the caller with the
 * server's own error code (src/http-error-body.ts), not a generic HTTP_ERROR.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { runHealthChecks } from '../../src/agent/health.js';
import { ServerClient } from '../../src/agent/server-client.js';
import { IbuError } from '../../src/errors.js';
import type { CheckinRequest } from '../../src/fleet/protocol.js';
import { startServer } from './server.js';

test('an unknown device token: the 4xx reaches the caller with the server code', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-client-'));
  const s = await startServer(dir);
  try {
    const req: CheckinRequest = { version: '1.0.0', state: 'idle', trial: false };
    // What the server itself answers, read raw, to compare with what the client reports.
    const raw = await fetch(`${s.url}/v1/devices/dev-x/checkin`, {
      method: 'POST',
      headers: { authorization: 'Bearer not-a-token', 'content-type': 'application/json' },
      body: JSON.stringify(req),
    });
    assert.ok(raw.status >= 400 && raw.status < 500, `HTTP ${raw.status}`);
    const body = (await raw.json()) as { error?: { code?: string } };
    const serverCode = body.error?.code;
    assert.ok(serverCode, JSON.stringify(body));

    const client = new ServerClient(s.url, 'dev-x', 'not-a-token');
    const err = await client.checkin(req).then(
      () => assert.fail('checkin with an unknown token succeeded'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof IbuError, String(err));
    assert.equal(err.code, serverCode);
    assert.notEqual(err.code, 'HTTP_ERROR');
  } finally {
    await s.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

/**
 * A hostile server streams an endless answer. The agent's reads are capped (issue #15): the
 * client hangs up after about its 1 MiB cap, so the server gets far fewer bytes out than it
 * offered (before the cap, the client read all 256 MiB into memory).
 */
async function endlessServer(): Promise<{ url: string; sent: () => number; close: () => Promise<void> }> {
  let sent = 0;
  const block = Buffer.alloc(64 * 1024, 0x7b);
  const srv = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' }); // no Content-Length: chunked, unbounded
    let left = 4096; // 256 MiB offered
    const more = (): void => {
      while (left > 0) {
        left--;
        sent += block.length;
        if (!res.write(block)) return void res.once('drain', more);
      }
      res.end();
    };
    res.on('error', () => {});
    res.socket?.on('close', () => (left = 0));
    more();
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  return { url, sent: () => sent, close: () => new Promise<void>((r) => (srv.closeAllConnections(), srv.close(() => r()))) };
}

test('an endless answer to a check-in is refused after the cap, not read into memory', async () => {
  const s = await endlessServer();
  try {
    const client = new ServerClient(s.url, 'dev-x', 'token');
    await assert.rejects(client.checkin({ version: '1.0.0', state: 'idle', trial: false }), (e) => e instanceof IbuError && e.code === 'HTTP_ERROR');
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(s.sent() < 64 * 1024 * 1024, `the server got ${s.sent()} bytes out`);
  } finally {
    await s.close();
  }
});

test('a health check reads only the status, not an endless body', async () => {
  const s = await endlessServer();
  try {
    const [r] = await runHealthChecks([{ name: 'web', url: s.url, timeoutSeconds: 30 }], 30, 1);
    assert.equal(r!.ok, true, r!.detail);
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(s.sent() < 64 * 1024 * 1024, `the server got ${s.sent()} bytes out`);
  } finally {
    await s.close();
  }
});
