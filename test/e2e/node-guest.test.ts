/**
 * The userland the agent scenarios need, proven in one boot: an image with Node and the ibu
 * project boots through GRUB + initramfs, `upgradectl --help` runs inside the guest, and the
 * guest reaches an HTTP server on the host's loopback through QEMU user networking with
 * restrict=on (the only way out is the guestfwd to 127.0.0.1:<port>), while other addresses stay
 * unreachable. Asserted from the serial log and the requests the host server saw.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import {
  e2eUnavailable,
  bootMedia,
  stageNodeRoot,
  buildImage,
  writeGrubCfg,
  createGrubenv,
  makeDisk,
  boot,
  missingInOrder,
  guestNetArgs,
  repoRoot,
} from './harness.js';
import { makeWorkDir, removeWorkDir } from './work-dir.js';
import { existsSync } from 'node:fs';

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/upgradectl.js')) ? null : 'dist/ is not built (npm run build)');

describe('guest userland: node and upgradectl inside a booted image, host reached over restricted user networking', { skip: unavailable ?? false }, () => {
  let work = '';
  let server: http.Server;
  const seen: string[] = [];

  before(async () => {
    work = await makeWorkDir('ibu-e2e-node-');
    server = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.setHeader('content-type', 'text/plain');
      res.end(`pong from the host for ${req.url}\n`);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });

  after(async () => {
    server?.close();
    await removeWorkDir(work);
  });

  test('upgradectl --help runs in the guest; node fetches from the host through the guestfwd only', async () => {
    const { kit, initrd, efi } = await bootMedia(work);
    const stage = path.join(work, 'stage');
    await stageNodeRoot(stage, { version: '1', kit, initrd });
    const hostTree = path.join(work, 'host-tree');
    await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
    await buildImage(stage, path.join(hostTree, 'images/1.img'), '1', 256);
    await fsp.rm(stage, { recursive: true, force: true });
    // the scenario script the image's init runs (test/e2e/node-init.sh)
    await fsp.mkdir(path.join(hostTree, 'ibu-e2e'));
    await fsp.writeFile(
      path.join(hostTree, 'ibu-e2e/run.sh'),
      [
        'node /opt/ibu/bin/upgradectl --help; echo "IBU-E2E upgradectl --help exit $?"',
        // the native addons load in the guest (their libraries came along)
        `cd /opt/ibu && node -e 'for (const m of ["better-sqlite3", "zstd-napi", "@napi-rs/blake-hash"]) require(m); console.log("IBU-E2E NATIVE OK")'; cd /`,
        `node -e 'fetch("http://10.0.2.100/ping").then(r => r.text()).then(t => console.log("IBU-E2E FETCH " + t.trim()), e => console.log("IBU-E2E FETCH FAILED " + e.cause?.code))'`,
        // restrict=on: the host's loopback alias and anything else must stay out of reach
        'for u in http://10.0.2.2:PORT/ http://10.0.2.100:81/; do timeout 5 wget -q -O /dev/null $u 2>/dev/null && echo "IBU-E2E REACHABLE $u" || echo "IBU-E2E BLOCKED $u"; done',
        '',
      ]
        .join('\n')
        .replace('PORT', String((server.address() as AddressInfo).port)),
    );
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1');
    const disk = path.join(work, 'disk.img');
    await makeDisk({ efi, hostTree, hostMiB: 768, out: disk });
    await fsp.rm(hostTree, { recursive: true, force: true });

    const port = (server.address() as AddressInfo).port;
    const res = await boot({ disk, logFile: path.join(work, 'node-guest.log'), memMiB: 1024, extra: guestNetArgs(port) });
    const tail = res.log.split('\n').slice(-60).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `the guest did not power off\n${tail}`);
    const miss = missingInOrder(res.log, [
      /ibu: booting image 1 \(trial=0\)/,
      /IBU-E2E net: eth0 10\.0\.2\.15\/24/,
      /IBU-E2E RUNNING version=1 trial=0 node=v20\./,
      /Usage: upgradectl/,
      /IBU-E2E upgradectl --help exit 0/,
      /IBU-E2E NATIVE OK/,
      /IBU-E2E FETCH pong from the host for \/ping/,
      /IBU-E2E BLOCKED http:\/\/10\.0\.2\.2:/,
      /IBU-E2E BLOCKED http:\/\/10\.0\.2\.100:81\//,
      /IBU-E2E POWEROFF version=1/,
    ]);
    assert.equal(miss, null, `${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
    assert.deepEqual(seen, ['GET /ping'], 'the host server saw exactly the guest request');
  });
});
