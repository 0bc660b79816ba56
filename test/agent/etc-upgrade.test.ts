/**
 * The agent's apply step on read-only images (issue #22): prepare, an edit on the device, then
 * apply writes the new image's /etc overlay layer from the three-way merge (the running image's
 * defaults read from its file, the new image's, the device's /etc at apply) and queues one
 * etc-conflict event naming every path changed on both sides. Real ext4 images, real loop mounts
 * (root), the real CLI; the reboot is faked as in every agent test (device.ts). 2.0 is published
 * with --verity: prepare checks its tree against the signed root hash, apply writes the verity record.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { BASE_PASSWD, cli, makeDevice } from './device.js';

const isRoot = process.getuid?.() === 0;
const RO = { '/usr/lib/ibu/readonly': 'readonly\n' };

test(
  'apply on a read-only image: /etc merged three ways into the new overlay layer, conflicts queued for the server',
  { skip: !isRoot && 'needs root' },
  async () => {
    const dev = await makeDevice({
      running: '1.0',
      releases: [
        { version: '1.0', files: { ...RO, '/etc/app/settings.conf': 'retention=7\n', '/etc/motd': 'v1\n', '/etc/app/vendor.conf': 'a=1\n' } },
        {
          version: '2.0',
          verity: true,
          files: {
            ...RO,
            '/etc/app/settings.conf': 'retention=14\n',
            '/etc/motd': 'v2\n',
            '/etc/app/vendor.conf': 'a=2\n',
            '/etc/passwd': BASE_PASSWD + 'systemd-network:x:998:998::/:/usr/sbin/nologin\n',
          },
        },
      ],
    });
    try {
      // the running system is the read-only 1.0: its /etc is the overlay view (device.ts wrote
      // passwd with alice, hostname, app/settings.conf retention=30)
      const etc = path.join(dev.systemRoot, 'etc');
      await fsp.mkdir(path.join(dev.systemRoot, 'usr/lib/ibu'), { recursive: true });
      await fsp.writeFile(path.join(dev.systemRoot, 'usr/lib/ibu/readonly'), 'readonly\n');
      await fsp.writeFile(path.join(etc, 'motd'), 'v1\n');
      await fsp.writeFile(path.join(etc, 'app/vendor.conf'), 'a=local\n');
      await dev.writeConfig({ etc: { rules: [{ path: 'app/vendor.conf', rule: 'vendor' }] } });
      let r = await cli(dev, ['init', '--default', '1.0', '--json']);
      assert.equal(r.code, 0, r.stderr);
      r = await cli(dev, ['prepare', '--version', '2.0', '--json']);
      assert.equal(r.code, 0, r.stderr);
      // an edit after prepare, before apply
      await fsp.writeFile(path.join(etc, 'late.conf'), 'made after prepare\n');

      r = await cli(dev, ['apply', '--now', '--json']);
      assert.equal(r.code, 0, r.stderr);
      const upper = path.join(dev.images, '.ibu/etc/2.0/upper');
      const read = (p: string): Promise<string> => fsp.readFile(path.join(upper, p), 'utf8');
      assert.equal(await read('late.conf'), 'made after prepare\n');
      assert.equal(await read('hostname'), 'device-42\n');
      assert.equal(await read('app/settings.conf'), 'retention=30\n', 'changed on both sides: the device wins by default');
      await assert.rejects(fsp.stat(path.join(upper, 'app/vendor.conf')), /ENOENT/, 'vendor rule: the new default shows through');
      assert.equal(await fsp.readFile(path.join(dev.images, '.ibu/etc/2.0/aside/app/vendor.conf'), 'utf8'), 'a=local\n', 'the losing device file is saved');
      await assert.rejects(fsp.stat(path.join(upper, 'motd')), /ENOENT/, 'untouched on the device: the new default shows through');
      const passwd = await read('passwd');
      assert.match(passwd, /^systemd-network:x:998:/m);
      assert.match(passwd, /^alice:x:1000:/m);
      assert.ok((await fsp.stat(path.join(dev.images, '.ibu/etc/2.0/work'))).isDirectory());
      // the running image's file and the new one are untouched: the layer is all there is
      const changed = (r.json!.migration as { changed: Array<{ path: string; action: string }> }).changed;
      assert.ok(
        changed.some((c) => c.path === '/etc/late.conf' && c.action === 'kept-device'),
        JSON.stringify(changed),
      );

      // 2.0 carries a dm-verity tree: prepare checked it against the signed root hash, apply wrote the record the initramfs opens it with
      const manifest = JSON.parse(await fsp.readFile(path.join(dev.storeDir, 'releases/2.0/manifest.json'), 'utf8')) as {
        verity: { rootHash: string; hashOffset: number };
      };
      assert.equal(await fsp.readFile(path.join(dev.images, '.ibu/verity/2.0'), 'utf8'), `${manifest.verity.rootHash} ${manifest.verity.hashOffset}\n`);

      const journal = JSON.parse(await fsp.readFile(path.join(dev.images, '.ibu/state.json'), 'utf8')) as {
        pendingEvents: Array<{ type: string; error?: { code: string; message: string } }>;
      };
      const ev = journal.pendingEvents.filter((e) => e.type === 'etc-conflict');
      assert.equal(ev.length, 1, JSON.stringify(journal.pendingEvents));
      assert.equal(ev[0]!.error!.code, 'ETC_CONFLICT');
      for (const p of ['/etc/app/settings.conf', '/etc/app/vendor.conf', '/etc/passwd']) assert.ok(ev[0]!.error!.message.includes(p), ev[0]!.error!.message);
      assert.doesNotMatch(ev[0]!.error!.message, /motd|late\.conf|hostname/);
    } finally {
      await dev.cleanup();
    }
  },
);
