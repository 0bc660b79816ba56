/** The pure parts of upgradectl adopt: the preflight plan, the fstab merge, the adoption env. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { planAdoption, type AdoptFacts } from '../../src/agent/adopt-preflight.js';
import { mergeFstab } from '../../src/agent/adopt-migration.js';
import { GrubBootloader } from '../../src/boot/grub-bootloader.js';
import { isIbuError } from '../../src/errors.js';

const MiB = 1048576;
function facts(patch: Partial<AdoptFacts> = {}, space: Partial<AdoptFacts['space']> = {}): AdoptFacts {
  return {
    firmware: 'uefi',
    grubVersion: '2.06-13+deb12u1',
    grubPackages: ['grub-efi-amd64'],
    root: { fsType: 'ext4', source: '/dev/vda2' },
    env: { writable: true, reason: '/ is ext4 on a plain block device' },
    boot: { separate: false, fsType: 'ext4' },
    space: { freeBytes: 2000 * MiB, neededBytes: 500 * MiB, imageBytes: 500 * MiB, reserveBytes: 64 * MiB, keepImages: 2.5, ...space },
    cleanable: [],
    ...patch,
  };
}

function code(f: AdoptFacts): string {
  try {
    planAdoption(f);
    return 'ok';
  } catch (err) {
    assert.ok(isIbuError(err));
    return err.code;
  }
}

test('preflight: what is refused and with which code', () => {
  const cases: Array<[string, AdoptFacts, string]> = [
    ['UEFI, grub-efi, ext4, room', facts(), 'ok'],
    ['BIOS, grub-pc', facts({ firmware: 'bios', grubPackages: ['grub-pc'] }), 'ok'],
    ['separate /boot on ext2', facts({ boot: { separate: true, fsType: 'ext2' } }), 'ok'],
    ['root on btrfs', facts({ root: { fsType: 'btrfs', source: '/dev/vda2' } }), 'ADOPT_UNSUPPORTED'],
    ['root on xfs', facts({ root: { fsType: 'xfs', source: '/dev/vda2' } }), 'ADOPT_UNSUPPORTED'],
    ['no GRUB package', facts({ grubVersion: null, grubPackages: [] }), 'ADOPT_UNSUPPORTED'],
    ['GRUB 1.99 (no save_env --file on our terms)', facts({ grubVersion: '1.99-27' }), 'ADOPT_UNSUPPORTED'],
    ['GRUB 2.02', facts({ grubVersion: '2.02+dfsg1-20' }), 'ok'],
    ['UEFI firmware but only grub-pc', facts({ grubPackages: ['grub-pc'] }), 'ADOPT_UNSUPPORTED'],
    ['BIOS firmware but only grub-efi', facts({ firmware: 'bios' }), 'ADOPT_UNSUPPORTED'],
    ['exactly enough', facts({}, { freeBytes: 564 * MiB }), 'ok'],
    ['one byte short', facts({}, { freeBytes: 564 * MiB - 1 }), 'NO_SPACE'],
    ['md RAID or LVM root: GRUB reads, the initramfs writes', facts({ env: { writable: false, reason: 'on md RAID (md0)' } }), 'ok'],
  ];
  for (const [name, f, want] of cases) assert.equal(code(f), want, name);
});

test('preflight: every problem is listed at once; nothing about space before the machine can be adopted', () => {
  try {
    planAdoption(facts({ root: { fsType: 'btrfs', source: '/dev/sda1' }, grubPackages: ['grub-pc'] }, { freeBytes: 0 }));
    assert.fail('accepted');
  } catch (err) {
    assert.ok(isIbuError(err, 'ADOPT_UNSUPPORTED'));
    const problems = (err.details as { problems: string[] }).problems;
    assert.equal(problems.length, 2);
    assert.match(problems[0]!, /btrfs/);
    assert.match(problems[1]!, /UEFI but no grub-efi/);
    assert.match(err.message, /Nothing was changed/);
  }
});

test('preflight: NO_SPACE says how much is missing and what could be cleaned', () => {
  try {
    planAdoption(
      facts({ cleanable: [{ what: 'downloaded packages in /var/cache/apt/archives (apt-get clean)', bytes: 300 * MiB }] }, { freeBytes: 400 * MiB }),
    );
    assert.fail('accepted');
  } catch (err) {
    assert.ok(isIbuError(err, 'NO_SPACE'));
    assert.match(err.message, /needs 564\.0 MiB .* 400\.0 MiB is free, 164\.0 MiB missing/);
    assert.match(err.message, /apt-get clean\) \(300\.0 MiB\)/);
    assert.equal((err.details as { shortBy: number }).shortBy, 164 * MiB);
  }
});

test('preflight: the env placement follows the agent (GRUB writes it, or the initramfs where GRUB cannot)', () => {
  assert.equal(planAdoption(facts()).tryClearedBy, 'grub');
  const raid = planAdoption(facts({ env: { writable: false, reason: 'on md RAID (md0)' } }));
  assert.equal(raid.tryClearedBy, 'initramfs');
  assert.ok(raid.warnings.some((w) => /initramfs clears/.test(w)));
});

test('fstab merge: data disks are kept, the image keeps its own system mounts, idempotent', () => {
  const live = [
    '# /etc/fstab: static file system information.',
    'UUID=1111 /               ext4    errors=remount-ro 0       1',
    'UUID=2222 /boot           ext2    defaults        0       2',
    'UUID=3333 /boot/efi       vfat    umask=0077      0       1',
    'UUID=4444 /srv/data       xfs     defaults        0       2',
    '/dev/sdb1  none  swap sw 0 0',
    '/swapfile none swap sw 0 0',
    'server:/export /mnt/nfs nfs defaults 0 0',
  ].join('\n');
  const image = 'LABEL=root / ext4 ro 0 1\ntmpfs /tmp tmpfs defaults 0 0\n';
  const m = mergeFstab(live, image);
  assert.deepEqual(m.added, ['/srv/data', 'swap /dev/sdb1', '/mnt/nfs']);
  assert.ok(m.text.startsWith(image));
  assert.doesNotMatch(m.text, /UUID=1111|UUID=2222|UUID=3333|swapfile/);
  assert.deepEqual(mergeFstab(live, m.text), { text: m.text, added: [] });
});

test('adoption env: no default until the trial commits; ibu_adopted goes with the first other commit or --finalize', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-adopt-env-'));
  try {
    const bl = new GrubBootloader({ dir });
    await bl.initAdopted('2.0');
    await bl.setTry('2.0');
    let st = await bl.read();
    assert.deepEqual([st.defaultImage, st.tryImage, st.adopted ?? null], [null, '2.0', '2.0']);
    await bl.commit('2.0');
    st = await bl.read();
    assert.deepEqual([st.defaultImage, st.adopted ?? null], ['2.0', '2.0'], 'committing the adopted image keeps the way back');
    await bl.commit('2.1');
    st = await bl.read();
    assert.deepEqual([st.defaultImage, st.adopted ?? null], ['2.1', null], 'the first committed upgrade after adoption ends it');
    await bl.initAdopted('3.0');
    await bl.commit('3.0');
    await bl.finalizeAdoption();
    assert.equal((await bl.read()).adopted, undefined);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
