/**
 * Fast checks of the boot shell pieces without QEMU (the boots themselves are in
 * boot-chain.test.ts): the grub.cfg generator (assets/grub/10_ibu) against GRUB's own parser
 * (grub-script-check), and the initramfs' env writer (assets/initramfs/ibu-boot.sh, run by
 * busybox sh as in the initramfs) against the agent's reader (src/boot/grub-bootloader.ts).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { GrubBootloader } from '../../src/boot/grub-bootloader.js';
import { adoptGrubScript } from '../../src/agent/adopt-grub.js';
import { repoRoot, HOST_UUID } from './harness.js';

const GEN = path.join(repoRoot(), 'assets/grub/10_ibu');
const LIB = path.join(repoRoot(), 'assets/initramfs/ibu-boot.sh');

describe('assets/grub/10_ibu', () => {
  let dir = '';
  before(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-grubcfg-'));
    await fsp.mkdir(path.join(dir, 'images'));
    for (const f of ['1.9.img', '1.10.img', '2026.1.2-rc1.img', '3.img.partial', 'bad name.img', 'notes.txt']) {
      await fsp.writeFile(path.join(dir, 'images', f), '');
    }
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const gen = (env: Record<string, string>) =>
    run('sh', [GEN], { env: { PATH: process.env.PATH, IBU_HOST: dir, IBU_HOST_UUID: HOST_UUID, ...env }, allowFailure: true });

  test(
    'bakes in the settings, has no menu to stop at, finds the images at boot, and GRUB parses it',
    { skip: !existsSync('/usr/bin/grub-script-check') && 'grub-script-check missing (grub-common)' },
    async () => {
      const res = await gen({ IBU_CMDLINE: 'console=ttyS0,115200', IBU_BOOT_TRIES: '4' });
      assert.equal(res.code, 0, res.stderr);
      // No list of images written at generation time: a stale list was how the old script got stuck.
      assert.doesNotMatch(res.stdout, /1\.10|1\.9|2026\.1\.2/);
      assert.match(res.stdout, /^\s*for f in \(\$ibu_host\)\/images\/\*\.img; do$/m);
      assert.match(res.stdout, /^set ibu_tries=4$/m);
      assert.match(res.stdout, /^set ibu_limit=xxxx$/m);
      assert.match(res.stdout, /^set ibu_cmdline="console=ttyS0,115200"$/m);
      assert.doesNotMatch(res.stdout, /menuentry|submenu/, 'nothing to stop at');
      assert.match(res.stdout, /loop=\/images\/\$1\.img boot=ibu \$ibu_root_mode panic=\$ibu_panic .*\$ibu_cmdline; then/);
      assert.match(res.stdout, /sleep \$ibu_retry\nreboot\n/);
      const cfg = path.join(dir, 'grub.cfg');
      await fsp.writeFile(cfg, res.stdout);
      const check = await run('grub-script-check', [cfg], { allowFailure: true });
      assert.equal(check.code, 0, check.stdout + check.stderr);
    },
  );

  test(
    'as /etc/grub.d/05_ibu of an adopted machine (upgradectl adopt): env on /boot/ibu, the conventional entries after it, GRUB parses it',
    { skip: !existsSync('/usr/bin/grub-script-check') && 'grub-script-check missing (grub-common)' },
    async () => {
      const script = path.join(dir, '05_ibu');
      await fsp.writeFile(script, adoptGrubScript(await fsp.readFile(GEN, 'utf8')), { mode: 0o755 });
      // as grub-mkconfig runs it: GRUB_CMDLINE_LINUX exported from /etc/default/grub
      const res = await run(script, [], { env: { PATH: process.env.PATH, IBU_HOST_UUID: HOST_UUID, GRUB_CMDLINE_LINUX: 'console=ttyS0' }, allowFailure: true });
      assert.equal(res.code, 0, res.stderr);
      assert.match(res.stdout, /^set ibu_env_files="\/boot\/ibu\/grubenv \/boot\/ibu\/grubenv\.bak"$/m);
      assert.match(res.stdout, /^set ibu_cmdline=" ?console=ttyS0 ?"$/m);
      assert.match(res.stdout, /^set ibu_root_mode=rw$/m, 'a writable image is the machine root');
      assert.match(res.stdout, /load_env --file .* ibu_images ibu_adopted$/m);
      // adopted: only the trial before a commit, no discovery, and no reboot loop: GRUB goes on to the menu entries below
      assert.match(res.stdout, /if \[ -z "\$ibu_adopted" -o -n "\$default_image" \]; then\n {2}ibu_try_boot "\$default_image" 0/);
      assert.match(res.stdout, /if \[ -n "\$ibu_adopted" \]; then\n {2}echo "ibu: adopted machine, no image to boot .*"\nelse\n/);
      const cfg = path.join(dir, 'grub-adopted.cfg');
      // what update-grub makes of it: this script, then the distribution's entries
      await fsp.writeFile(cfg, res.stdout + "menuentry 'Debian GNU/Linux' { linux /boot/vmlinuz root=UUID=x ro }\n");
      const check = await run('grub-script-check', [cfg], { allowFailure: true });
      assert.equal(check.code, 0, check.stdout + check.stderr);
    },
  );

  test("given the host's UUID (make-efi.sh's built-in copy), it writes the script on a machine that holds no images", async () => {
    // Regression: the check meant for /etc/grub.d on a machine without images made the EFI binary's
    // built-in copy empty on a build machine without /images, and a damaged host grub.cfg then left
    // GRUB at its prompt (test/e2e/boot-recovery.test.ts, case h).
    const res = await run('sh', [GEN], { env: { PATH: process.env.PATH, IBU_HOST_UUID: HOST_UUID }, allowFailure: true });
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /^### ibu: boot /m);
    assert.match(res.stdout, new RegExp(`^set ibu_host_uuid=${HOST_UUID}$`, 'm'));
  });

  test('bad settings are refused with a message naming the setting', async () => {
    for (const [env, re] of [
      [{ IBU_HOST_UUID: 'not a uuid' }, /IBU_HOST_UUID/],
      [{ IBU_ROOT_MODE: 'rx' }, /IBU_ROOT_MODE must be ro or rw/],
      [{ IBU_PANIC: 'soon' }, /IBU_PANIC/],
      [{ IBU_CMDLINE: 'a"b' }, /IBU_CMDLINE must not contain/],
      [{ IBU_ENV_FILES: '/boot/grub/grub;env' }, /IBU_ENV_FILES/],
      [{ IBU_BOOT_TRIES: '0' }, /IBU_BOOT_TRIES must be a number from 1 to 9/],
      [{ IBU_BOOT_TRIES: '12' }, /IBU_BOOT_TRIES/],
      [{ IBU_RETRY_SECONDS: 'later' }, /IBU_RETRY_SECONDS/],
    ] as const) {
      const res = await gen(env);
      assert.notEqual(res.code, 0, JSON.stringify(env));
      assert.match(res.stderr, re);
    }
  });
});

// Both initramfs flavours' shells: busybox's, and klibc's as Debian's initramfs-tools has it without
// busybox (the appliance's initrd: klibc's sh and tools, no tr, sed, grep, head or wc; PATH holds
// only klibc's tools, as there).
const KLIBC = '/usr/lib/klibc/bin';
const SHELLS = [
  { name: 'busybox sh', skip: !existsSync('/bin/busybox') && 'busybox missing', cmd: '/bin/busybox', pre: ['sh'], env: { PATH: process.env.PATH } },
  {
    name: "klibc's sh and tools only",
    skip: !existsSync(`${KLIBC}/sh`) && 'klibc-utils missing (initramfs-tools-core)',
    cmd: `${KLIBC}/sh`,
    pre: [],
    env: { PATH: KLIBC },
  },
];

for (const shell of SHELLS)
  describe(`assets/initramfs/ibu-boot.sh env writer (${shell.name}) and the agent reader agree`, { skip: shell.skip }, () => {
    let dir = '';
    before(async () => {
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-envsh-'));
    });
    after(async () => {
      await fsp.rm(dir, { recursive: true, force: true });
    });
    const sh = (script: string) => run(shell.cmd, [...shell.pre, '-c', `. ${LIB}; ${script}`], { env: shell.env, allowFailure: true });

    test('clearing try_image bumps the sequence, rewrites both copies in place, keeps other variables', async () => {
      const bl = new GrubBootloader({ dir });
      await bl.init('1.0');
      await bl.setTry('2.0');
      const before = await bl.read();
      assert.equal(before.tryImage, '2.0');
      const ino = (await fsp.stat(path.join(dir, 'grubenv'))).ino;
      const res = await sh(`ibu_env_update ${dir} try_image=`);
      assert.equal(res.code, 0, res.stderr);
      const after = await bl.read();
      assert.deepEqual([after.defaultImage, after.tryImage, after.warnings], ['1.0', null, []]);
      const [a, b] = await Promise.all(['grubenv', 'grubenv.bak'].map((f) => fsp.readFile(path.join(dir, f))));
      assert.equal(a.length, 1024);
      assert.ok(a.equals(b), 'both copies alike');
      assert.match(a.toString('latin1'), /^# GRUB Environment Block\nibu_seq=3\ndefault_image=1\.0\nibu_check=3\n#+$/);
      assert.equal((await fsp.stat(path.join(dir, 'grubenv'))).ino, ino, 'same inode: rewritten in place');
      // grub-editenv (GRUB's own format code) reads it too
      const list = await run('grub-editenv', [path.join(dir, 'grubenv'), 'list']);
      assert.equal(list.stdout, 'ibu_seq=3\ndefault_image=1.0\nibu_check=3\n');
    });

    test('a torn primary is ignored: the update starts from the backup and rewrites it whole', async () => {
      const bl = new GrubBootloader({ dir });
      await bl.init('1.0');
      const primary = path.join(dir, 'grubenv');
      // ibu_check=99 also makes the copy one byte too long: the writer must replace it whole
      const torn = (await fsp.readFile(primary, 'latin1')).replace(/ibu_check=\d+/, 'ibu_check=99');
      await fsp.writeFile(primary, torn, 'latin1');
      const res = await sh(`ibu_env_update ${dir} default_image=2.0`);
      assert.equal(res.code, 0, res.stderr);
      const st = await bl.read();
      assert.deepEqual([st.defaultImage, st.warnings], ['2.0', []]);
      assert.equal((await fsp.stat(primary)).size, 1024);
    });

    test('the counters GRUB passes where it cannot write (ibu.attempt/tally/bad) are written with try_image cleared', async () => {
      const mnt = path.join(dir, 'host');
      const grub = path.join(mnt, 'boot', 'grub');
      await fsp.mkdir(grub, { recursive: true });
      const bl = new GrubBootloader({ dir: grub, tryClearedBy: 'initramfs' });
      await bl.init('1.0');
      await bl.setTry('2.0');
      const res = await sh(`ibu_log() { echo "$*"; }; IBU_TRYCLEAR=1 IBU_ATTEMPT=2.0 IBU_TALLY=xx IBU_BAD=" 3.0 0.9"; ibu_clear_try ${mnt}`);
      assert.equal(res.code, 0, res.stderr);
      assert.match(res.stdout, /wrote try_image= ibu_attempt=2\.0 ibu_tally=xx ibu_bad=3\.0 0\.9 in /);
      const st = await bl.read();
      assert.deepEqual([st.tryImage, st.attempt, st.bad, st.warnings], [null, { image: '2.0', boots: 2 }, ['3.0', '0.9'], []]);
    });

    test('no valid copy: the writer refuses (status 1) and writes nothing', async () => {
      for (const f of ['grubenv', 'grubenv.bak']) await fsp.writeFile(path.join(dir, f), 'garbage');
      const res = await sh(`ibu_env_update ${dir} try_image=`);
      assert.equal(res.code, 1);
      assert.equal(await fsp.readFile(path.join(dir, 'grubenv'), 'utf8'), 'garbage');
    });

    test("GRUB's ibu.bad=,A,B list becomes words; a missing image file is named with the ones there", async () => {
      const words = await sh(`ibu_words ,3.0,0.9 ,; ibu_words '' ,; ibu_words ,,a,,b, ,`);
      assert.equal(words.stdout, '3.0 0.9\n\na b\n', words.stderr);
      const host = path.join(dir, 'missing');
      await fsp.mkdir(path.join(host, 'images'), { recursive: true });
      for (const f of ['1.0.img', '2.0.img']) await fsp.writeFile(path.join(host, 'images', f), '');
      const res = await sh(`ibu_fatal() { echo "FATAL: $*"; exit 3; }; IBU_LOOP=/images/9.img IBU_HOSTDEV=/dev/vda2; ibu_mount_image ${host} /nonexistent`);
      assert.equal(res.code, 3, res.stderr);
      assert.equal(res.stdout, 'FATAL: image file /images/9.img not found on the host partition /dev/vda2 (have: 1.0.img 2.0.img )\n');
    });

    test('an env block whose text fills all 1024 bytes (no padding) is read and rewritten', async () => {
      const bl = new GrubBootloader({ dir });
      await bl.init('1.0');
      const head = '# GRUB Environment Block\nibu_seq=7\ndefault_image=1.0\n';
      const tail = 'ibu_check=7\n';
      const filler = `x=${'y'.repeat(1024 - head.length - tail.length - 3)}\n`;
      const full = head + filler + tail;
      assert.equal(full.length, 1024);
      for (const f of ['grubenv', 'grubenv.bak']) await fsp.writeFile(path.join(dir, f), full, 'latin1');
      const res = await sh(`ibu_env_valid ${dir}/grubenv && ibu_env_update ${dir} x= try_image=2.0`);
      assert.equal(res.code, 0, res.stderr);
      assert.equal(res.stdout, '7\n');
      const st = await bl.read();
      assert.deepEqual([st.defaultImage, st.tryImage, st.warnings], ['1.0', '2.0', []]);
      assert.match(
        await fsp.readFile(path.join(dir, 'grubenv'), 'latin1'),
        /^# GRUB Environment Block\nibu_seq=8\ndefault_image=1\.0\ntry_image=2\.0\nibu_check=8\n#+$/,
      );
    });
  });
