import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { runHealthChecks } from '../../src/agent/health.js';
import { checkInhibitors } from '../../src/agent/inhibitors.js';

test('health checks: HTTP and commands, retried until the deadline, timeouts enforced', async () => {
  let hits = 0;
  // A service that answers 503 twice while "starting", then 200.
  const server = http.createServer((req, res) => {
    hits++;
    res.writeHead(req.url === '/ok' ? (hits <= 2 ? 503 : 200) : 404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const ok = await runHealthChecks(
      [
        { name: 'web', url: `${base}/ok`, expectStatus: 200, timeoutSeconds: 2 },
        { name: 'cmd', command: ['sh', '-c', 'exit 0'], timeoutSeconds: 2 },
      ],
      10,
      0.05,
    );
    assert.deepEqual(
      ok.map((r) => [r.name, r.ok]),
      [
        ['web', true],
        ['cmd', true],
      ],
    );
    assert.equal(ok[0]!.attempts, 3);
    const bad = await runHealthChecks(
      [
        { name: 'missing', url: `${base}/nope`, expectStatus: 200, timeoutSeconds: 1 },
        { name: 'hangs', command: ['sleep', '30'], timeoutSeconds: 0.3 },
        { name: 'down', url: 'http://127.0.0.1:1/', expectStatus: 200, timeoutSeconds: 1 },
      ],
      0.5,
      0.1,
    );
    assert.deepEqual(
      bad.map((r) => r.ok),
      [false, false, false],
    );
    assert.match(bad[0]!.detail, /HTTP 404, expected 200/);
    assert.match(bad[1]!.detail, /timed out/);
  } finally {
    server.close();
  }
});

test('health checks: a check with retry false answers once, and its failure ends the others at once', async () => {
  const res = await runHealthChecks(
    [
      // still "starting" for good: retried every 0.2 s until the 60 s deadline (~300 tries), unless cut short
      { name: 'service', command: ['sh', '-c', 'exit 3'], timeoutSeconds: 2 },
      // waits for its own answer (like `systemctl is-system-running --wait`), then says degraded
      { name: 'system up', command: ['sh', '-c', 'sleep 0.5; exit 1'], timeoutSeconds: 5, retry: false },
    ],
    60,
    0.2,
  );
  assert.deepEqual(
    res.map((r) => [r.name, r.ok]),
    [
      ['service', false],
      ['system up', false],
    ],
  );
  assert.equal(res[1]!.attempts, 1, 'answered once');
  assert.match(res[0]!.detail, /not retried: system up failed for good/);
  assert.ok(res[0]!.attempts <= 40, `the retrying check stopped once the outcome was settled: ${res[0]!.attempts} attempts`);
  // A passing check with retry false is simply one pass.
  const ok = await runHealthChecks([{ name: 'up', command: ['true'], timeoutSeconds: 2, retry: false }], 5, 0.1);
  assert.deepEqual(
    ok.map((r) => [r.ok, r.attempts]),
    [[true, 1]],
  );
});

test('inhibitors: a lock file or a failing command means busy', async () => {
  const states = await checkInhibitors([
    { name: 'lock', lockFile: '/nonexistent/ibu.lock' },
    { name: 'busy', command: ['sh', '-c', 'exit 1'] },
    { name: 'idle', command: ['true'] },
  ]);
  assert.deepEqual(
    states.map((s) => [s.name, s.busy]),
    [
      ['lock', false],
      ['busy', true],
      ['idle', false],
    ],
  );
});
