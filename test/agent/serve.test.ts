/**
 * The agent against the real `ibu serve` (src/server, in-process on 127.0.0.1:0): `upgradectl enroll`,
 * a staged rollout naming the target at check-in, a delta the server builds on demand (the agent
 * waits on its 202s), events and the device record on the server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { cli, makeDevice } from './device.js';
import { storeServer } from './store-server.js';

async function post(url: string, body: unknown, token?: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

test('upgrade through the real ibu serve: rollout target, on-demand delta (202 then 200), success recorded', async () => {
  const dev = await makeDevice({ running: '1.0', releases: [{ version: '1.0' }, { version: '2.0' }] });
  const { srv, close } = await storeServer(dev);
  try {
    await srv.app.listen({ port: 0, host: '127.0.0.1' });
    const url = `http://127.0.0.1:${(srv.app.server.address() as AddressInfo).port}`;
    const tokenFile = path.join(dev.dir, 'token');
    await dev.writeConfig({ server: { url, deviceId: 'box-1', tokenFile }, download: { maxRetryAfterSeconds: 1, deltaWaitSeconds: 300 } });
    const e = await cli(dev, ['enroll', '--secret', 'enroll-me', '--json']);
    assert.equal(e.code, 0, e.stderr);
    assert.equal(((await fsp.stat(tokenFile)).mode & 0o777).toString(8), '600');
    assert.equal(((await fsp.stat(path.join(dev.dir, 'device.key'))).mode & 0o777).toString(8), '600', 'the device key beside the token');
    // The device re-enrolls on its key alone: no secret, a new token.
    const token1 = await fsp.readFile(tokenFile, 'utf8');
    const again = await cli(dev, ['enroll', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.notEqual(await fsp.readFile(tokenFile, 'utf8'), token1);
    // Another key claiming the enrolled id is refused with a clear code, even with the fleet secret.
    await dev.writeConfig({ server: { url, deviceId: 'box-1', tokenFile: path.join(dev.dir, 'token2'), keyFile: path.join(dev.dir, 'other.key') } });
    const bad = await cli(dev, ['enroll', '--secret', 'enroll-me', '--json']);
    assert.equal(bad.code, 8);
    assert.equal((bad.json!.error as { code: string }).code, 'UNAUTHORIZED');
    await dev.writeConfig({ server: { url, deviceId: 'box-1', tokenFile }, download: { maxRetryAfterSeconds: 1, deltaWaitSeconds: 300 } });
    await post(`${url}/v1/admin/fleet/releases`, { channel: 'stable', version: '1.0' }, 'admin-token');
    await post(`${url}/v1/admin/fleet/releases`, { channel: 'stable', version: '2.0' }, 'admin-token');
    const ro = await post(`${url}/v1/admin/fleet/rollouts`, { channel: 'stable', version: '2.0', spec: { waves: [100] } }, 'admin-token');
    assert.ok(ro.status < 300, JSON.stringify(ro.json));
    assert.equal((await cli(dev, ['init', '--default', '1.0'])).code, 0);

    let r = await cli(dev, ['check', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.json!.target as { version: string } | null)?.version, '2.0', JSON.stringify(r.json));
    r = await cli(dev, ['prepare', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.json!.download as { method: string }).method, 'delta', r.stderr);
    assert.match(r.stderr, /retrying in/, 'the agent waited on the server building the delta');
    r = await cli(dev, ['apply', '--json']);
    assert.equal(r.json!.outcome, 'rebooting', r.stderr);
    await dev.boot();
    r = await cli(dev, ['confirm', '--json']);
    assert.equal(r.json!.outcome, 'committed', r.stderr);
    const res = await fetch(`${url}/v1/admin/fleet/devices/box-1`, { headers: { authorization: 'Bearer admin-token' } });
    const device = (await res.json()) as Record<string, unknown>;
    assert.equal(device.version, '2.0', JSON.stringify(device));
  } finally {
    await close();
    await dev.cleanup();
  }
});
