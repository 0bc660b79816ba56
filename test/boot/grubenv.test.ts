import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../../src/util/exec.js';
import { formatEnvBlock, parseEnvBlock, GRUBENV_SIZE } from '../../src/boot/grubenv.js';
import { GrubBootloader, ENV_PRIMARY, ENV_BACKUP } from '../../src/boot/grub-bootloader.js';
import { isIbuError } from '../../src/errors.js';

async function tmp(): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-grubenv-'));
}

/** grub-editenv (the real tool) is the oracle: it must list exactly our variables. */
async function editenvList(file: string): Promise<Record<string, string>> {
  const { stdout } = await run('grub-editenv', [file, 'list']);
  const out: Record<string, string> = {};
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

test('our block is valid for grub-editenv and we read what grub-editenv writes', async () => {
  const dir = await tmp();
  try {
    const ours = path.join(dir, 'ours');
    await fsp.writeFile(ours, formatEnvBlock({ default_image: '1.0', try_image: '2.0-rc1' }));
    assert.deepEqual(await editenvList(ours), { default_image: '1.0', try_image: '2.0-rc1' });
    // grub-editenv rewrites our file (as GRUB's save_env would): we still parse it.
    await run('grub-editenv', [ours, 'unset', 'try_image']);
    await run('grub-editenv', [ours, 'set', 'saved_entry=x']);
    assert.deepEqual(parseEnvBlock(await fsp.readFile(ours)), { default_image: '1.0', saved_entry: 'x' });
    const theirs = path.join(dir, 'theirs');
    await run('grub-editenv', [theirs, 'create']);
    await run('grub-editenv', [theirs, 'set', 'a=1', 'b=two words']);
    const buf = await fsp.readFile(theirs);
    assert.equal(buf.length, GRUBENV_SIZE);
    assert.deepEqual(parseEnvBlock(buf), { a: '1', b: 'two words' });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('bad blocks are refused with BOOTENV_INVALID', () => {
  const good = formatEnvBlock({ a: '1' });
  assert.throws(
    () => parseEnvBlock(good.subarray(0, 500)),
    (e) => isIbuError(e, 'BOOTENV_INVALID'),
  );
  const bad = Buffer.from(good);
  bad.write('XXXX', 0);
  assert.throws(
    () => parseEnvBlock(bad),
    (e) => isIbuError(e, 'BOOTENV_INVALID'),
  );
  assert.throws(
    () => formatEnvBlock({ big: 'x'.repeat(2000) }),
    (e) => isIbuError(e, 'BOOTENV_INVALID'),
  );
  assert.throws(
    () => formatEnvBlock({ 'bad name': '1' }),
    (e) => isIbuError(e, 'BOOTENV_INVALID'),
  );
});

test('redundant copies: both written, both valid for grub-editenv, updated in place', async () => {
  const dir = await tmp();
  try {
    const bl = new GrubBootloader({ dir });
    assert.equal((await bl.init('1')).created, true);
    const a = path.join(dir, ENV_PRIMARY);
    const b = path.join(dir, ENV_BACKUP);
    const inoA = (await fsp.stat(a)).ino;
    assert.equal((await bl.setTry('2')).created, false);
    assert.equal((await fsp.stat(a)).ino, inoA, 'primary rewritten in place (same inode)');
    assert.deepEqual(await bl.read(), { defaultImage: '1', tryImage: '2', source: a, warnings: [], bad: [], attempt: null });
    for (const f of [a, b]) {
      const l = await editenvList(f);
      assert.equal(l.default_image, '1');
      assert.equal(l.try_image, '2');
      assert.equal(l.ibu_seq, l.ibu_check);
    }
    // GRUB clears try_image with save_env: emulate with grub-editenv on both copies.
    await run('grub-editenv', [a, 'unset', 'try_image']);
    await run('grub-editenv', [b, 'unset', 'try_image']);
    assert.equal((await bl.read()).tryImage, null);
    await bl.commit('2');
    const s = await bl.read();
    assert.equal(s.defaultImage, '2');
    assert.equal(s.tryImage, null);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a torn or corrupt primary: the backup is used, and the next write repairs it', async () => {
  const dir = await tmp();
  try {
    const a = path.join(dir, ENV_PRIMARY);
    const bl = new GrubBootloader({ dir });
    await bl.init('1');
    await bl.setTry('2');
    const good = await fsp.readFile(a);
    const damages: Array<[string, (f: string) => Promise<void>]> = [
      ['truncated mid-write', (f) => fsp.truncate(f, 300)],
      [
        'zeroed first sector',
        async (f) => {
          const x = Buffer.from(good);
          x.fill(0, 0, 512);
          await fsp.writeFile(f, x);
        },
      ],
      [
        'tail lost (ibu_check gone)',
        async (f) => {
          const x = Buffer.from(good);
          const at = x.indexOf('ibu_check');
          x.fill('#'.charCodeAt(0), at);
          await fsp.writeFile(f, x);
        },
      ],
      ['garbage', (f) => fsp.writeFile(f, Buffer.alloc(1024, 0x5a))],
    ];
    for (const [name, damage] of damages) {
      await damage(a);
      const s = await bl.read();
      assert.equal(s.defaultImage, '1', name);
      assert.equal(s.tryImage, '2', name);
      assert.equal(s.source, path.join(dir, ENV_BACKUP), name);
      assert.equal(s.warnings.length, 1, name);
      await bl.clearTry();
      const r = await bl.read();
      assert.equal(r.source, a, `${name}: primary repaired`);
      assert.deepEqual(r.warnings, []);
      assert.equal(r.tryImage, null);
      await bl.setTry('2');
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a crash between the two copies leaves the new state in the primary and the old in the backup', async () => {
  const dir = await tmp();
  try {
    await new GrubBootloader({ dir }).init('1');
    const crashing = new GrubBootloader({
      dir,
      afterCopyWritten: (i) => {
        if (i === 0) throw new Error('simulated crash');
      },
    });
    await assert.rejects(crashing.setTry('2'), /simulated crash/);
    const bl = new GrubBootloader({ dir });
    assert.equal((await bl.read()).tryImage, '2');
    const backup = parseEnvBlock(await fsp.readFile(path.join(dir, ENV_BACKUP)));
    assert.equal(backup.try_image, undefined);
    // and if the primary then tears, the backup's older but whole state is what boots
    await fsp.truncate(path.join(dir, ENV_PRIMARY), 10);
    assert.equal((await bl.read()).tryImage, null);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('both copies bad: BOOTENV_INVALID, and writes refuse to guess', async () => {
  const dir = await tmp();
  try {
    const bl = new GrubBootloader({ dir });
    await assert.rejects(bl.read(), (e) => isIbuError(e, 'BOOTENV_INVALID'));
    await bl.init('1');
    await fsp.writeFile(path.join(dir, ENV_PRIMARY), 'x');
    await fsp.writeFile(path.join(dir, ENV_BACKUP), 'y');
    await assert.rejects(bl.read(), (e) => isIbuError(e, 'BOOTENV_INVALID'));
    await assert.rejects(bl.setTry('2'), (e) => isIbuError(e, 'BOOTENV_INVALID'));
    await bl.init('1');
    assert.equal((await bl.read()).defaultImage, '1');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('initramfs mode marks the env so the GRUB script does not call save_env', async () => {
  const dir = await tmp();
  try {
    const bl = new GrubBootloader({ dir, tryClearedBy: 'initramfs' });
    await bl.init('1');
    await bl.setTry('2');
    assert.equal((await editenvList(path.join(dir, ENV_PRIMARY))).ibu_try_clear, 'initramfs');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a plain env without the markers (e.g. made by grub-editenv) is not trusted, as GRUB does not trust it', async () => {
  const dir = await tmp();
  try {
    const a = path.join(dir, ENV_PRIMARY);
    await run('grub-editenv', [a, 'create']);
    await run('grub-editenv', [a, 'set', 'default_image=1', 'saved_entry=0']);
    const bl = new GrubBootloader({ dir });
    await assert.rejects(bl.read(), (e) => isIbuError(e, 'BOOTENV_INVALID') && /no ibu_seq\/ibu_check markers/.test(e.message));
    await bl.init('1');
    const l = await editenvList(path.join(dir, ENV_BACKUP));
    assert.deepEqual([l.default_image, l.ibu_seq, l.ibu_check], ['1', '1', '1']);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("GRUB's boot counting: read as GRUB's save_env leaves it, reset by markGood, a re-tried image leaves the skip list", async () => {
  const dir = await tmp();
  try {
    const a = path.join(dir, ENV_PRIMARY);
    const b = path.join(dir, ENV_BACKUP);
    const bl = new GrubBootloader({ dir, listImages: async () => ['3', '2', '1'] });
    await bl.init('2');
    assert.equal((await editenvList(a)).ibu_images, '3 2 1', 'the fallback order GRUB reads');
    // What assets/grub/10_ibu writes with save_env into both copies: 3 used up its boots, 2 is being counted.
    for (const f of [a, b]) await run('grub-editenv', [f, 'set', 'ibu_attempt=2', 'ibu_tally=xx', 'ibu_bad= 3']);
    let s = await bl.read();
    assert.deepEqual([s.attempt, s.bad, s.warnings], [{ image: '2', boots: 2 }, ['3'], []]);
    await bl.markGood('2');
    s = await bl.read();
    assert.deepEqual([s.attempt, s.bad, s.defaultImage], [null, ['3'], '2']);
    const l = await editenvList(b);
    assert.equal(l.ibu_attempt, undefined, 'both copies reset');
    assert.equal(l.ibu_seq, l.ibu_check);
    await bl.setTry('3');
    assert.deepEqual((await bl.read()).bad, [], 'a new trial of 3 gets its boots afresh');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
