import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HOOK_DIR } from '../../src/build/mmdebstrap.js';

// The real hook on a scratch root: what it writes does not need a package set.
test('scrub.sh stamps /etc/.updated and /var/.updated as systemd-update-done does, from SOURCE_DATE_EPOCH', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-scrub-'));
  try {
    const root = path.join(dir, 'root');
    await fsp.mkdir(path.join(root, 'etc'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'debian.sources'), 'Types: deb\n');
    const env = { ...process.env, SOURCE_DATE_EPOCH: '1735689600', IBU_HOSTNAME: 'box', IBU_SOURCES: path.join(dir, 'debian.sources'), IBU_KERNEL: '0' };
    execFileSync('sh', [path.join(HOOK_DIR, 'scrub.sh'), root], { env });
    for (const d of ['etc', 'var']) {
      const f = path.join(root, d, '.updated');
      const text = await fsp.readFile(f, 'utf8');
      // systemd's condition reads TIMESTAMP_NSEC when the mtime has no nanoseconds; the image pins every mtime to the epoch
      assert.match(text, /^# This file was created by systemd-update-done\. /);
      assert.equal(text.split('\n').filter(Boolean).at(-1), 'TIMESTAMP_NSEC=1735689600000000000');
      assert.equal((await fsp.stat(f)).mode & 0o777, 0o644);
    }
    // the same input, the same bytes (reproducible)
    const first = await fsp.readFile(path.join(root, 'etc', '.updated'));
    execFileSync('sh', [path.join(HOOK_DIR, 'scrub.sh'), root], { env });
    assert.deepEqual(await fsp.readFile(path.join(root, 'etc', '.updated')), first);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
