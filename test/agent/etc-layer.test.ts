/**
 * The /etc merge on real directories (src/agent/etc-layer.ts): three real trees read into facts,
 * the plan written as an overlayfs upper dir, and the kernel's overlayfs mounted over the new
 * image's /etc to check what the device then sees. Needs root (mknod whiteouts, chown, mount).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { planEtcMerge } from '../../src/agent/etc-merge.js';
import { readEtcTree, writeEtcLayer } from '../../src/agent/etc-layer.js';

const isRoot = process.getuid?.() === 0;

type Spec = Record<string, string | { dir: true } | { link: string }>;
async function make(root: string, spec: Spec): Promise<void> {
  await fsp.mkdir(root, { recursive: true });
  for (const [p, v] of Object.entries(spec)) {
    const full = path.join(root, p);
    await fsp.mkdir(path.dirname(full), { recursive: true });
    if (typeof v === 'string') await fsp.writeFile(full, v);
    else if ('dir' in v) await fsp.mkdir(full, { recursive: true });
    else await fsp.symlink(v.link, full);
  }
}

const OLD: Spec = {
  passwd: 'root:x:0:0:root:/root:/bin/sh\n',
  group: 'root:x:0:\nsudo:x:27:\n',
  'machine-id': '',
  hostname: 'appliance\n',
  'app.conf': 'level=1\n',
  motd: 'hello 1\n',
  'x.conf': 'a file\n',
  'resolv.conf': { link: '/run/resolv.conf' },
  'cron.d/job': '* * * * * true\n',
  'ssh/sshd_config': 'Port 22\n',
};
const NEW: Spec = {
  ...OLD,
  passwd: 'root:x:0:0:root:/root:/bin/sh\nsystemd-network:x:998:998::/:/usr/sbin/nologin\n',
  group: 'root:x:0:\nsudo:x:27:\nsystemd-journal:x:999:\n',
  motd: 'hello 2\n',
  'app.conf': 'level=2\n',
  'new.conf': 'vendor added\n',
};
const DEVICE: Spec = {
  ...OLD,
  passwd: 'root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n',
  group: 'root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n',
  'machine-id': '0123456789abcdef0123456789abcdef\n',
  hostname: 'box-17\n',
  'app.conf': 'level=9\n',
  'x.conf': { dir: true },
  'x.conf/part': 'now a directory\n',
  'resolv.conf': 'nameserver 192.0.2.1\n',
  'ssh/ssh_host_ed25519_key': 'device key\n',
  'cron.d': { dir: true },
};
delete (DEVICE as Record<string, unknown>)['cron.d/job'];

test('etc layer: the merged view through overlayfs is the three-way result', { skip: !isRoot && 'needs root' }, async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-etc-layer-'));
  const mnt = path.join(dir, 'view');
  t.after(async () => {
    try {
      execFileSync('umount', [mnt], { stdio: 'ignore' });
    } catch {
      /* not mounted */
    }
    await fsp.rm(dir, { recursive: true, force: true });
  });
  await make(path.join(dir, 'old'), OLD);
  await make(path.join(dir, 'new'), NEW);
  await make(path.join(dir, 'device'), DEVICE);
  const [o, n, d] = await Promise.all(['old', 'new', 'device'].map((x) => readEtcTree(path.join(dir, x))));
  const plan = planEtcMerge(o!, n!, d!, [{ path: 'app.conf', rule: 'vendor' }]);
  const upper = path.join(dir, 'layer', 'upper');
  const saved = await writeEtcLayer(plan, d!, n!, {
    deviceEtc: path.join(dir, 'device'),
    newEtc: path.join(dir, 'new'),
    upper,
    aside: path.join(dir, 'aside'),
  });
  assert.deepEqual(saved, ['app.conf']);
  assert.equal(await fsp.readFile(path.join(dir, 'aside', 'app.conf'), 'utf8'), 'level=9\n');
  assert.deepEqual(plan.conflicts.map((c) => c.path).sort(), ['app.conf', 'group', 'passwd']);

  await fsp.mkdir(path.join(dir, 'layer', 'work'), { recursive: true });
  await fsp.mkdir(mnt);
  execFileSync('mount', [
    '-t',
    'overlay',
    'overlay',
    '-o',
    `lowerdir=${path.join(dir, 'new')},upperdir=${upper},workdir=${path.join(dir, 'layer', 'work')}`,
    mnt,
  ]);
  const read = (p: string): Promise<string> => fsp.readFile(path.join(mnt, p), 'utf8');
  assert.equal(await read('passwd'), 'root:x:0:0:root:/root:/bin/sh\nsystemd-network:x:998:998::/:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n');
  assert.equal(await read('group'), 'root:x:0:\nsudo:x:27:alice\nsystemd-journal:x:999:\nalice:x:1000:\n');
  assert.equal(await read('machine-id'), '0123456789abcdef0123456789abcdef\n');
  assert.equal(await read('hostname'), 'box-17\n');
  assert.equal(await read('motd'), 'hello 2\n', 'untouched by the device: the new default');
  assert.equal(await read('app.conf'), 'level=2\n', 'vendor rule: the new default (the device one saved aside)');
  assert.equal(await read('new.conf'), 'vendor added\n');
  assert.equal(await read('x.conf/part'), 'now a directory\n', 'file became a directory');
  assert.equal((await fsp.lstat(path.join(mnt, 'resolv.conf'))).isFile(), true, 'symlink became a file');
  assert.equal(await read('resolv.conf'), 'nameserver 192.0.2.1\n');
  assert.equal(await read('ssh/ssh_host_ed25519_key'), 'device key\n');
  await assert.rejects(fsp.stat(path.join(mnt, 'cron.d/job')), /ENOENT/, 'deleted on the device: stays deleted');
  assert.equal((await fsp.stat(path.join(mnt, 'cron.d'))).isDirectory(), true);

  // the layer holds only what differs from the new defaults
  const layer = [...(await readEtcTree(upper)).keys()].sort();
  assert.deepEqual(layer, [
    'cron.d',
    'cron.d/job',
    'group',
    'hostname',
    'machine-id',
    'passwd',
    'resolv.conf',
    'ssh',
    'ssh/ssh_host_ed25519_key',
    'x.conf',
    'x.conf/part',
  ]);

  // idempotent: the same facts give the same layer (a crash mid-step reruns it)
  execFileSync('umount', [mnt]);
  await writeEtcLayer(plan, d!, n!, { deviceEtc: path.join(dir, 'device'), newEtc: path.join(dir, 'new'), upper, aside: path.join(dir, 'aside') });
  assert.deepEqual([...(await readEtcTree(upper)).keys()].sort(), layer);
});
