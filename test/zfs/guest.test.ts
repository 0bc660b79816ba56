/**
 * The ZFS test guest itself, proven in one boot (test/zfs/harness.ts): Debian's kernel loads the
 * ZFS modules built by dkms, the real zpool/zfs create a whole-disk pool (udev reports the
 * partitions) and a sparse zvol with its /dev/zvol link, node runs ibu from the checkout with its
 * native addons, an ext4 image on the zvol is loop-mounted, and a snapshot + `zfs send -i` +
 * `zfs recv` into a second pool round-trips with equal hashes. Asserted from the serial log and
 * from files the guest leaves in /share (the exported image is read on the host with debugfs).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { zfsUnavailable, zfsKit, runZfsGuest, describeKit } from './harness.js';

const unavailable = zfsUnavailable();

// Each step prints "STEP <name> ok" or "STEP <name> FAIL <status>"; the last step's status is the script's.
const SCRIPT = String.raw`
set -u
step() { n=$1; shift; if "$@"; then echo "STEP $n ok"; else r=$?; echo "STEP $n FAIL $r"; exit "$r"; fi; }
waitfor() { i=0; while [ ! -e "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done; [ -e "$1" ]; }
step zfs_version sh -c 'zfs version > /share/zfs-version.txt'
step pool_whole_disk zpool create -f -o ashift=12 tank /dev/vdb
step pool_second zpool create -f -o ashift=12 backup /dev/vdc
# whole-disk: zpool labelled vdb (GPT, data in part 1), which only works when udev reports vdb1
step whole_disk_labelled test -b /dev/vdb1
step zvol_sparse zfs create -s -V 64M -o volblocksize=16k tank/vol
step zvol_link waitfor /dev/zvol/tank/vol
zfs get -Hp -o value refreservation,volsize tank/vol | tr '\n' ' ' > /share/zvol-props.txt
step ibu_help sh -c 'node "$IBU_REPO/bin/ibu" --help > /share/ibu-help.txt'
step bin_upgradectl sh -c '"$IBU_REPO/bin/upgradectl" --help > /dev/null'
# the host tools the product shells out to, from the host's root
step host_tools sh -c 'for t in zstd mke2fs e2fsck debugfs losetup mount fsfreeze blkid rsync sha256sum; do command -v $t > /dev/null || { echo "missing $t"; exit 1; }; done'
# native addons load from the checkout; an HTTP server on 127.0.0.1 answers (lo is up), through undici's fetch
cat > /tmp/check.cjs <<'JS'
const req = require('node:module').createRequire(process.env.IBU_REPO + '/package.json');
const Db = req('better-sqlite3'); const z = req('zstd-napi'); const b = req('@napi-rs/blake-hash');
const buf = Buffer.from('ibu zfs guest'.repeat(100));
if (!z.decompress(z.compress(buf)).equals(buf)) process.exit(3);
const sqlite = new Db(':memory:').prepare('select sqlite_version() v').get().v;
const srv = require('node:http').createServer((q, s) => s.end('pong')).listen(0, '127.0.0.1', async () => {
  const body = await (await fetch('http://127.0.0.1:' + srv.address().port + '/')).text();
  console.log('NATIVE sqlite=' + sqlite + ' blake3=' + b.blake3(buf).toString('hex').slice(0, 16) + ' http=' + body);
  srv.close();
});
JS
step native_addons_http node /tmp/check.cjs
# an ext4 image written straight onto the zvol, version 1 then 2 (what a release does)
mkdir -p /tmp/tree && echo "version 1" > /tmp/tree/hello.txt && head -c 3000000 /dev/urandom > /tmp/tree/blob
step mke2fs_on_zvol mke2fs -q -F -t ext4 -d /tmp/tree /dev/zvol/tank/vol
step snap1 zfs snapshot tank/vol@1
step mount_zvol mount -t ext4 /dev/zvol/tank/vol /mnt
echo "version 2" > /mnt/hello.txt
step umount_zvol umount /mnt
step snap2 zfs snapshot tank/vol@2
step send_full sh -c 'zfs send tank/vol@1 > /tmp/full.zs'
step send_incr sh -c 'zfs send -i @1 tank/vol@2 > /share/incr.zs'
step recv_full sh -c 'zfs recv backup/vol < /tmp/full.zs'
step recv_incr sh -c 'zfs recv backup/vol < /share/incr.zs'
step backup_link waitfor /dev/zvol/backup/vol
zfs list -H -t snapshot -o name -r backup/vol | tr '\n' ' ' > /share/backup-snapshots.txt
step hashes sh -c 'for v in tank/vol backup/vol; do sha256sum < /dev/zvol/$v | cut -d" " -f1; done > /share/hashes.txt'
# export the received zvol to a sparse image file and loop-mount it, as a device does before GRUB
step export_image dd if=/dev/zvol/backup/vol of=/tmp/exported.img bs=1M conv=sparse status=none
step loop_mount mount -o loop,ro /tmp/exported.img /mnt
cat /mnt/hello.txt > /share/loop-hello.txt
step loop_umount umount /mnt
step e2fsck_export e2fsck -fn /tmp/exported.img
cp --sparse=always /tmp/exported.img /share/exported.img
step scrub sh -c 'zpool scrub -w backup && zpool status -x backup | grep -q "is healthy"'
step export_pools sh -c 'zpool export backup && zpool export tank'
`;

describe('ZFS test guest: Debian kernel + dkms-built ZFS, real zpool/zfs, node and ibu from the checkout', { skip: unavailable ?? false }, () => {
  let work = '';

  before(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-zfs-smoke-'));
  });

  after(async () => {
    if (work && process.env.IBU_ZFS_KEEP !== '1') await fsp.rm(work, { recursive: true, force: true });
    else if (work) console.log(`ZFS smoke work dir kept: ${work}`);
  });

  test('one boot: modules, whole-disk pool, sparse zvol + link, ibu and native addons, loop-mounted ext4, send -i/recv round trip', async (t) => {
    const kit = await zfsKit();
    t.diagnostic(describeKit(kit));
    const share = path.join(work, 'share');
    await fsp.mkdir(share);
    const res = await runZfsGuest({
      script: SCRIPT,
      disks: [
        { file: path.join(work, 'tank.img'), sizeMiB: 512 },
        { file: path.join(work, 'backup.img'), sizeMiB: 512 },
      ],
      share,
      logFile: path.join(work, 'guest.log'),
    });
    const tail = res.log.split('\n').slice(-40).join('\n');
    assert.equal(res.timedOut, false, `the guest timed out\n${tail}`);
    assert.match(res.log, /^IBU-ZFS READY /m, `the guest never got ready\n${tail}`);
    const failed = /^STEP (\S+) FAIL (\d+)/m.exec(res.log);
    assert.equal(failed, null, `guest step ${failed?.[1]} failed (status ${failed?.[2]})\n${tail}`);
    assert.equal(res.exitCode, 0, `the script's exit status\n${tail}`);
    const steps = [...res.log.matchAll(/^STEP (\S+) ok$/gm)].map((m) => m[1]);
    assert.equal(steps.length, [...SCRIPT.matchAll(/^step /gm)].length, `every step ran: ${steps.join(' ')}`);

    // the modules and the tools are the versions setup resolved
    const ver = await fsp.readFile(path.join(share, 'zfs-version.txt'), 'utf8');
    assert.match(ver, new RegExp(`^zfs-${kit.zfsVersion.replace(/[.+]/g, '\\$&')}$`, 'm'));
    assert.match(ver, new RegExp(`^zfs-kmod-${kit.zfsVersion.replace(/[.+]/g, '\\$&')}$`, 'm'));
    // sparse: no reservation for the 64 MiB volume
    assert.equal(await fsp.readFile(path.join(share, 'zvol-props.txt'), 'utf8'), `0 ${64 * 1048576} `);
    assert.match(await fsp.readFile(path.join(share, 'ibu-help.txt'), 'utf8'), /Usage: ibu/);
    assert.match(res.log, /^NATIVE sqlite=3\.\d+\.\d+ blake3=[0-9a-f]{16} http=pong$/m);

    // the incremental stream is a real ZFS send stream: DRR_BEGIN first, with the ZFS magic
    const stream = await fsp.readFile(path.join(share, 'incr.zs'));
    assert.equal(stream.readUInt32LE(0), 0, 'first record is DRR_BEGIN');
    assert.equal(stream.readBigUInt64LE(8), 0x2f5bacbacn, 'DMU backup magic');
    assert.equal(await fsp.readFile(path.join(share, 'backup-snapshots.txt'), 'utf8'), 'backup/vol@1 backup/vol@2 ');
    const [a, b] = (await fsp.readFile(path.join(share, 'hashes.txt'), 'utf8')).trim().split('\n');
    assert.match(a, /^[0-9a-f]{64}$/);
    assert.equal(b, a, 'received zvol equals the sent one');

    // the exported image, read on the host by real e2fsprogs: version 2's file
    assert.equal(await fsp.readFile(path.join(share, 'loop-hello.txt'), 'utf8'), 'version 2\n');
    const img = path.join(share, 'exported.img');
    assert.equal((await fsp.stat(img)).size, 64 * 1048576);
    assert.equal((await run('debugfs', ['-R', 'cat /hello.txt', img])).stdout, 'version 2\n');
    assert.equal((await run('e2fsck', ['-fn', img], { allowFailure: true })).code, 0);
  });
});
