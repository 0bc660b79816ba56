import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bytesToAllocate, planCleanup } from '../../src/agent/disk-policy.js';
import { inWindow, nextOpening } from '../../src/agent/window.js';
import { loadConfig, validateConfig } from '../../src/agent/config.js';
import { mergeAccountFile } from '../../src/agent/migration.js';
import { isIbuError } from '../../src/errors.js';

const MiB = 1024 * 1024;
const img = (version: string, mib: number, kind: 'image' | 'partial' = 'image') => ({ version, kind, allocated: mib * MiB });

test('disk policy: partials first, then oldest images; never protected ones; exact shortfall', () => {
  const files = [img('1', 100), img('2', 100), img('3', 100), img('4', 100), img('0.5', 40, 'partial')];
  const base = { neededBytes: 100 * MiB, imageBytes: 100 * MiB, reserveBytes: 10 * MiB, keepImages: 2.5, files, protect: ['3', '4'] };
  // Enough space already for the download and the half image of headroom: nothing removed.
  assert.deepEqual(planCleanup({ ...base, freeBytes: 200 * MiB }).remove, []);
  // 60 MiB free: needs 110 (required), wants 160 (desired): partial (40) → 100, image 1 → 200.
  const p = planCleanup({ ...base, freeBytes: 60 * MiB });
  assert.deepEqual(
    p.remove.map((r) => r.version),
    ['0.5', '1'],
  );
  assert.equal(p.ok, true);
  // Not even "required" reachable without deleting protected images: nothing deleted, exact shortfall.
  const q = planCleanup({ ...base, freeBytes: 0, files: [img('3', 100), img('4', 100), img('1', 50)] });
  assert.equal(q.ok, false);
  assert.deepEqual(q.remove, []);
  assert.equal(q.shortBy, 60 * MiB);
  // Best effort: "required" met but not "desired": delete what helps, succeed.
  const r = planCleanup({ ...base, freeBytes: 70 * MiB, files: [img('3', 100), img('4', 100), img('1', 50)] });
  assert.deepEqual(
    r.remove.map((x) => x.version),
    ['1'],
  );
  assert.equal(r.ok, true);
});

test('bytes to allocate: blocks touched by non-zero chunks, shared blocks once, zero runs free', () => {
  const chunks = [
    { offset: 0, size: 6000 }, // blocks 0-1
    { offset: 6000, size: 100 }, // block 1 again
    { offset: 6100, size: 8192, zero: true as const }, // blocks 1-3, a hole except where shared
    { offset: 14292, size: 5000 }, // blocks 3-4
  ];
  assert.equal(bytesToAllocate(chunks, 4096), 4 * 4096);
  assert.equal(bytesToAllocate([], 4096), 0);
});

test('maintenance windows in IANA time zones, wrapping past midnight', () => {
  const w = { timeZone: 'Europe/Berlin', rules: [{ days: [1, 2, 3, 4, 5], start: '22:00', end: '04:00' }] };
  // Monday 2026-11-23 21:30 UTC = 22:30 in Berlin (CET, UTC+1): open.
  assert.equal(inWindow(w, new Date('2026-11-23T21:30:00Z')), true);
  // Tuesday 02:00 Berlin = Monday 01:00 UTC... i.e. 2026-11-24T01:00Z: open (wrapped from Monday).
  assert.equal(inWindow(w, new Date('2026-11-24T01:00:00Z')), true);
  // Monday 12:00 Berlin: closed; next opening Monday 22:00 Berlin = 21:00 UTC.
  assert.equal(inWindow(w, new Date('2026-11-23T11:00:00Z')), false);
  assert.equal(nextOpening(w, new Date('2026-11-23T11:00:00Z'))?.toISOString(), '2026-11-23T21:00:00.000Z');
  // Saturday night is not a start day, Sunday 02:00 Berlin follows Saturday: closed.
  assert.equal(inWindow(w, new Date('2026-11-29T01:00:00Z')), false);
  // Summer time: 2026-07-06 (Monday) 20:30 UTC = 22:30 CEST: open.
  assert.equal(inWindow(w, new Date('2026-07-06T20:30:00Z')), true);
  assert.equal(inWindow(null, new Date()), true);
});

test('config: every problem reported at once with CONFIG_INVALID', async () => {
  try {
    validateConfig(
      {
        server: { url: 'ftp://x', deviceId: '' },
        keyring: 'relative/dir',
        checkpoint: 'maybe',
        migration: [
          { path: '/etc/passwd', strategy: 'union' },
          { path: 'etc/x', strategy: 'copy' },
        ],
        health: { checks: [{ name: 'a' }, { name: 'b', command: ['true'], retry: 'no' }] },
        window: { timeZone: 'Mars/Olympus', rules: [{ days: [7], start: '25:00', end: '04:00' }] },
        inhibitors: [{}],
        typo: 1,
      },
      'agent.json',
    );
    assert.fail('should throw');
  } catch (err) {
    assert.ok(isIbuError(err, 'CONFIG_INVALID'));
    const problems = err.details!.problems as string[];
    for (const re of [
      /unknown key 'typo'/,
      /server.url/,
      /server.deviceId/,
      /keyring must be an absolute/,
      /checkpoint/,
      /migration\[0\].strategy/,
      /migration\[1\].path/,
      /health.checks\[0\] needs/,
      /health.checks\[1\].retry must be true or false/,
      /Mars\/Olympus/,
      /days/,
      /start must be HH:MM/,
      /inhibitors\[0\] needs/,
    ]) {
      assert.ok(
        problems.some((p) => re.test(p)),
        `missing problem ${re}: ${problems.join(' | ')}`,
      );
    }
    assert.equal(problems.length, 13);
  }
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-cfg-'));
  try {
    await assert.rejects(loadConfig(path.join(dir, 'none.json')), (e) => isIbuError(e, 'CONFIG_INVALID'));
    await fsp.writeFile(path.join(dir, 'bad.json'), '{ nope');
    await assert.rejects(loadConfig(path.join(dir, 'bad.json')), /not valid JSON/);
    await fsp.writeFile(path.join(dir, 'ok.json'), JSON.stringify({ keyring: '/etc/ibu/keyring' }));
    const cfg = await loadConfig(path.join(dir, 'ok.json'));
    assert.equal(cfg.hostMount, '/host');
    assert.equal(cfg.imagesDir, '/host/images');
    assert.deepEqual(cfg.reboot.command, ['systemctl', 'reboot']);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('account merge keeps accounts added on either side', () => {
  const oldP = 'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n';
  const newP = 'root:x:0:0:root:/root:/bin/sh\nsystemd-network:x:998:998::/:/usr/sbin/nologin\n';
  const m = mergeAccountFile(oldP, newP, 'passwd');
  assert.equal(m.text, 'root:x:0:0:root:/root:/bin/bash\nsystemd-network:x:998:998::/:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n');
  assert.deepEqual(m.added, ['alice']);
  assert.equal(mergeAccountFile(oldP, m.text, 'passwd').text, m.text, 'idempotent');
  const g = mergeAccountFile('adm:x:4:alice\n', 'adm:x:4:syslog\nnew:x:5:\n', 'group');
  assert.equal(g.text, 'adm:x:4:alice,syslog\nnew:x:5:\n');
  const c = mergeAccountFile('bob:x:999:999::/:/bin/sh\n', 'svc:x:999:999::/:/bin/false\n', 'passwd');
  assert.deepEqual(c.conflicts, ['passwd id 999 is used by both svc and bob']);
});
