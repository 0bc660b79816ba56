import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';

/** The repository root: the nearest parent holding assets/systemd (the test runs from test/ or dist/test/). */
async function unitsDir(): Promise<string> {
  let d = path.dirname(new URL(import.meta.url).pathname);
  for (;;) {
    const cand = path.join(d, 'assets', 'systemd');
    if (
      await fsp.access(cand).then(
        () => true,
        () => false,
      )
    )
      return cand;
    const up = path.dirname(d);
    if (up === d) throw new Error('assets/systemd not found above the test file');
    d = up;
  }
}

test('assets/systemd units pass systemd-analyze verify', async () => {
  const dir = await unitsDir();
  const names = (await fsp.readdir(dir)).filter((n) => /\.(service|timer)$/.test(n));
  assert.deepEqual(names.sort(), [
    'upgradectl-apply.service',
    'upgradectl-apply.timer',
    'upgradectl-checkin.service',
    'upgradectl-checkin.timer',
    'upgradectl-confirm.service',
    'upgradectl-prepare.service',
    'upgradectl-prepare.timer',
  ]);
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-units-'));
  try {
    for (const n of names) {
      // upgradectl is not installed in /usr/bin here; verify checks that ExecStart exists.
      const text = (await fsp.readFile(path.join(dir, n), 'utf8')).replaceAll('/usr/bin/upgradectl', '/bin/true');
      await fsp.writeFile(path.join(tmp, n), text);
    }
    const r = await run('systemd-analyze', ['verify', '--man=no', ...names.map((n) => path.join(tmp, n))], { allowFailure: true });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr.trim(), '', 'no warnings');
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});
