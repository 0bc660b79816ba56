/**
 * The agent's HTTP client against the real server: a refusal reaches the caller with the
 * server's own error code (src/http-error-body.ts), not a generic HTTP_ERROR.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
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
