/**
 * zstd frames and initramfs images in RECOMPRESS ops (issue #20 items 1–2): frames as Debian 13's
 * `zstd` writes them (from a pipe as mkinitramfs does, from a file, multi- and single-threaded),
 * a real initramfs laid out as Debian 13's mkinitramfs lays it out (an uncompressed cpio of the
 * `.ko.xz` modules, then the main cpio through `zstd -q -9`) made with the real `cpio`, real
 * mke2fs images and a real apply: the output must be the target bit for bit. Frames no level
 * reproduces, and corrupted frames, fall back to PATCH; hostile settings, another zstd and a
 * modified source are refused with their codes; apply's peak RSS stays bounded.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { zstdBinding } from '../../src/chunk/compress.js';
import { encoderArgs, paramsValid, zstdCandidates, zstdFacts } from '../../src/delta/compressed-stream.js';
import { cpioLayout } from '../../src/delta/cpio-layout.js';
import { applyDelta, makeDelta, readDelta } from '../../src/delta/index.js';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { binaryish, imageJson, makeImage, mutate, tempDir, writeTree, type TreeEntry } from './fixture.js';
import { sealDelta, splitDelta } from './fuzz-mutants.js';

const REPO = path.resolve(import.meta.dirname, '../../..');
/**
 * Frames as Debian 13's `zstd` 1.5.7 writes them. This host's `zstd` is Debian 12's 1.5.4,
 * which writes other bytes, so the frames come from libzstd 1.5.7 (zstd-napi) fed as the CLI
 * feeds it: 128 KiB at a time, the size pledged only for a file. That this is byte for byte
 * what trixie's `zstd` CLI writes was checked with its binary (docs/delta-format.md).
 */
function cliZstd(data: Buffer, level: number, o: { file?: boolean; check?: boolean; single?: boolean } = {}): Buffer {
  const c = new zstdBinding.CCtx();
  c.setParameter(zstdBinding.CParameter.compressionLevel, level);
  c.setParameter(zstdBinding.CParameter.checksumFlag, o.check === false ? 0 : 1);
  if (!o.single) c.setParameter(zstdBinding.CParameter.nbWorkers, 1);
  if (o.file) c.setPledgedSrcSize(data.length);
  const out: Buffer[] = [];
  const buf = Buffer.alloc(1 << 20);
  for (let at = 0; at < data.length;) {
    const [, produced, consumed] = c.compressStream2(buf, data.subarray(at, at + (128 << 10)), zstdBinding.EndDirective.continue);
    out.push(Buffer.from(buf.subarray(0, produced)));
    at += consumed;
  }
  for (;;) {
    const [left, produced] = c.compressStream2(buf, Buffer.alloc(0), zstdBinding.EndDirective.end);
    out.push(Buffer.from(buf.subarray(0, produced)));
    if (left === 0) return Buffer.concat(out);
  }
}
/** What mkinitramfs runs: `zstd -q -9` with cpio on its stdin (no content size in the frame). */
const zstdPipe = (data: Buffer): Buffer => cliZstd(data, 9);
/** This host's own `zstd` (1.5.4): another version than the pinned encoder. */
const hostZstd = (data: Buffer, args: string[]): Buffer => execFileSync('zstd', [...args, '-c'], { input: data, maxBuffer: 1 << 28 });
const KBUILD_XZ = ['-T2', '--check=crc32', '--lzma2=dict=1MiB'];
const xz = (data: Buffer): Buffer => execFileSync('xz', [...KBUILD_XZ, '-c'], { input: data, maxBuffer: 1 << 28 });
const text = (seed: number, n: number): Buffer =>
  Buffer.from(
    Array.from(binaryish(seed, n / 6))
      .map((b) => `w${b % 89} `)
      .join('')
      .slice(0, n),
  );

/**
 * An initramfs as Debian 13's mkinitramfs writes it: `cpio -o -H newc --reproducible` of the
 * already-compressed files, then the rest through `cpio | zstd -q -9` (or `gzip -n`).
 */
function initramfs(files: Record<string, Buffer>): Buffer {
  const dir = tempDir('ibu-initramfs-');
  try {
    for (const [p, data] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(dir.dir, p)), { recursive: true });
      fs.writeFileSync(path.join(dir.dir, p), data);
      fs.utimesSync(path.join(dir.dir, p), 1700000000, 1700000000);
    }
    const names = Object.keys(files).sort();
    const cpio = (list: string[]): Buffer =>
      execFileSync('cpio', ['--quiet', '-R', '0:0', '--reproducible', '-o', '-H', 'newc'], { cwd: dir.dir, input: list.join('\n') + '\n', maxBuffer: 1 << 28 });
    const early = cpio(names.filter((n) => n.endsWith('.xz')));
    const main = zstdPipe(cpio(names.filter((n) => !n.endsWith('.xz'))));
    return Buffer.concat([early, main]);
  } finally {
    dir.cleanup();
  }
}

describe('zstd frames and initramfs layout', () => {
  const raw = text(1, 300_000);

  it('reads a frame: content size only when made from a file, the checksum flag; the settings tried include the ones used', () => {
    const piped = zstdFacts(zstdPipe(raw));
    assert.deepEqual(piped, { contentSize: undefined, check: 1, window: piped!.window });
    const filed = zstdFacts(cliZstd(raw, 19, { file: true, check: false }));
    assert.equal(filed?.contentSize, raw.length);
    assert.equal(filed?.check, 0);
    const c = zstdCandidates(piped!);
    assert.deepEqual(c[0], { codec: 'zstd', level: 9, check: 1, dict: 0, threads: 1 }, "Debian 13's mkinitramfs first");
    assert.ok(c.every(paramsValid));
    assert.deepEqual(encoderArgs(c[0]!), ['-9', '--check', '-T1'], 'the zstd command line these settings stand for');
  });

  it('refuses what is not one whole frame: two frames, trailing bytes, a truncated frame, a window over 8 MiB', () => {
    const f = zstdPipe(raw);
    assert.equal(zstdFacts(Buffer.concat([f, f])), undefined);
    assert.equal(zstdFacts(Buffer.concat([f, Buffer.alloc(4)])), undefined);
    assert.equal(zstdFacts(f.subarray(0, f.length - 10)), undefined);
    assert.equal(zstdFacts(hostZstd(binaryish(2, 1 << 20), ['-q', '--long=27', '-3'])), undefined);
    for (const bad of [{ level: 20 }, { level: 0 }, { check: 2 }, { dict: 2 }, { threads: 2 }]) {
      assert.equal(paramsValid({ codec: 'zstd', level: 9, check: 1, dict: 0, threads: 1, ...bad }), false, JSON.stringify(bad));
    }
  });

  it('finds the members and the compressed main archive of an initramfs', () => {
    const mod = xz(binaryish(3, 40_000));
    const img = initramfs({ 'usr/lib/modules/6.12.1/kernel/a.ko.xz': mod, init: Buffer.from('#!/bin/sh\n') });
    const l = cpioLayout(img)!;
    assert.deepEqual(
      l.members.map((m) => m.name),
      ['usr/lib/modules/6.12.1/kernel/a.ko.xz'],
    );
    assert.ok(img.subarray(l.members[0]!.start, l.members[0]!.start + l.members[0]!.length).equals(mod));
    assert.ok(l.tail !== undefined && zstdFacts(img.subarray(l.tail)) !== undefined);
    assert.equal(cpioLayout(mod), undefined);
    assert.equal(cpioLayout(img.subarray(0, 200)), undefined, 'a header past the end');
  });
});

describe('delta make --recompress / apply: zstd files and an initramfs', () => {
  const tmp = tempDir('ibu-delta-recompress-initrd-');
  const p = (n: string): string => path.join(tmp.dir, n);
  const A = p('a.img');
  const B = p('b.img');
  const MODULES = 8;
  const mods = Array.from({ length: MODULES }, (_, i) => binaryish(300 + i, 30_000 + i * 7_000));
  const scripts = text(20, 400_000);
  const big = text(21, 2_600_000);
  const small = text(22, 200_000);

  function tree(v: 'a' | 'b'): Record<string, TreeEntry> {
    const abi = v === 'a' ? '6.12.117+deb13-amd64' : '6.12.118+deb13-amd64';
    const files: Record<string, Buffer> = { 'scripts/init-top/x': v === 'a' ? scripts : mutate(scripts, 30) };
    mods.forEach((m, i) => {
      files[`usr/lib/modules/${abi}/kernel/m${i}.ko.xz`] = xz(v === 'a' ? m : mutate(m, 400 + i, 3, 16));
    });
    const change = (b: Buffer, seed: number): Buffer => (v === 'a' ? b : mutate(b, seed));
    return {
      'etc/ibu/image.json': imageJson(v === 'a' ? '1.0' : '1.1'),
      [`boot/initrd.img-${abi}`]: initramfs(files),
      // More than the 2 MiB trial prefix, level 19 from a pipe: level 9 is tried on the prefix and refused first.
      'usr/share/big.zst': cliZstd(change(big, 31), 19),
      // From a file, single-threaded, no checksum.
      'usr/share/small.zst': cliZstd(change(small, 32), 5, { file: true, single: true, check: false }),
      // Parameters no level gives: not reproduced, a PATCH.
      'usr/share/custom.zst': hostZstd(change(small, 33), ['-q', '-6', '--zstd=hashLog=12,chainLog=12']),
      // Another zstd version (this host's 1.5.4, -9 as mkinitramfs): not reproduced by the pinned 1.5.7, a PATCH.
      'usr/share/older.zst': hostZstd(change(big, 35), ['-q', '-9']),
      // A corrupted old frame (its structure intact, a block's bytes not): it does not decode, so a PATCH.
      'usr/share/corrupt.zst': v === 'a' ? corruptFrame(zstdPipe(text(23, 100_000))) : zstdPipe(mutate(text(23, 100_000), 34)),
    };
  }

  /** Flips bytes inside the first compressed block, keeping the frame's block structure. */
  function corruptFrame(f: Buffer): Buffer {
    const out = Buffer.from(f);
    for (let i = 40; i < 60; i++) out[i] = out[i]! ^ 0x5a;
    return out;
  }

  before(async () => {
    writeTree(p('ta'), tree('a'));
    writeTree(p('tb'), tree('b'));
    await makeImage(p('ta'), A, { size: '32M' });
    await makeImage(p('tb'), B, { size: '32M' });
  });
  after(() => tmp.cleanup());

  it('the initramfs (its modules and its zstd main archive) and the zstd files rebuild bit for bit, under half the plain patches', async () => {
    const plain = await makeDelta({ fromImage: A, toImage: B, out: p('plain.ibudelta'), jobs: 2 });
    const rc = await makeDelta({ fromImage: A, toImage: B, out: p('rc.ibudelta'), jobs: 2, recompress: true });
    // Streams: 8 modules + the initramfs main archive + big + small reproduced; custom and older not; corrupt.zst does not decode.
    assert.deepEqual(rc.recompress, { candidates: MODULES + 6, reproduced: MODULES + 3, notReproduced: 3 });
    assert.equal(rc.files.recompressed, 3, 'the initramfs, big.zst, small.zst');
    assert.ok(rc.bytes * 2 < plain.bytes, `recompress ${rc.bytes} B vs plain ${plain.bytes} B`);

    const d = readDelta(p('rc.ibudelta'));
    assert.deepEqual(d.header.encoders, { xz: d.header.encoders?.xz, zstd: zstdBinding.versionString() }, 'the pinned libzstd');
    const initrd = d.ops.filter((o) => 'path' in o && o.path.startsWith('/boot/initrd.img'));
    assert.equal(initrd.filter((o) => o.type === 'recompress').length, MODULES + 1);
    assert.equal(initrd.filter((o) => o.type === 'patch').length, 1, 'the cpio headers and the uncompressed bytes: one PATCH');
    const main = initrd.find((o) => o.type === 'recompress' && o.params.codec === 'zstd');
    assert.ok(main && main.type === 'recompress');
    assert.deepEqual(main.params, { codec: 'zstd', level: 9, check: 1, dict: 0, threads: 1 });
    assert.match(main.srcPath, /initrd\.img-6\.12\.117/);
    const bigOp = d.ops.find((o) => o.type === 'recompress' && o.path === '/usr/share/big.zst');
    assert.deepEqual(bigOp?.type === 'recompress' && bigOp.params, { codec: 'zstd', level: 19, check: 1, dict: 0, threads: 1 });
    const smallOp = d.ops.find((o) => o.type === 'recompress' && o.path === '/usr/share/small.zst');
    // Under one job's size, multi-threaded mode writes what --single-thread does: the first candidate that matches is kept.
    assert.ok(smallOp?.type === 'recompress');
    assert.deepEqual({ ...smallOp.params, threads: 0 }, { codec: 'zstd', level: 5, check: 0, dict: 1, threads: 0 });
    for (const f of ['/usr/share/custom.zst', '/usr/share/corrupt.zst', '/usr/share/older.zst']) {
      assert.equal(d.ops.find((o) => 'path' in o && o.path === f)?.type, 'patch', `${f} falls back to a PATCH`);
    }

    const r = await applyDelta({ sourceImage: A, delta: p('rc.ibudelta'), out: p('out.img') });
    assert.ok(fs.readFileSync(p('out.img')).equals(fs.readFileSync(B)));
    assert.equal(r.failedOps.length, 0);
  });

  it("apply's peak RSS stays bounded (a child process, GNU time)", () => {
    const r = spawnSync(
      '/usr/bin/time',
      ['-f', '%M', process.execPath, path.join(REPO, 'bin/ibu'), 'delta', 'apply', '--from', A, '--delta', p('rc.ibudelta'), '--out', p('out-rss.img')],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const kib = Number(r.stderr.trim().split('\n').at(-1));
    assert.ok(kib > 0 && kib < 200 * 1024, `peak RSS ${kib} KiB`);
    assert.ok(fs.readFileSync(p('out-rss.img')).equals(fs.readFileSync(B)));
  });

  it('refuses another zstd version (TOOL_MISSING) and a zstd level over 19 (DELTA_INVALID), before any output exists', async () => {
    const parts = splitDelta(fs.readFileSync(p('rc.ibudelta')));
    const h = JSON.parse(parts.json.toString()) as { encoders: Record<string, string> };
    h.encoders.zstd = '0.0.1';
    fs.writeFileSync(p('wrong-zstd.ibudelta'), sealDelta({ ...parts, json: Buffer.from(JSON.stringify(h)) }));
    await assert.rejects(applyDelta({ sourceImage: A, delta: p('wrong-zstd.ibudelta'), out: p('out2.img') }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'TOOL_MISSING');
      assert.match(e.message, /zstd 0\.0\.1/);
      return true;
    });
    assert.equal(fs.existsSync(p('out2.img.partial')), false);
    // The level byte of a zstd RECOMPRESS op, set to 22 (which would need --ultra and a 128 MiB window on the device).
    const table = Buffer.from(parts.table);
    const d = readDelta(p('rc.ibudelta'));
    const op = d.ops.findIndex((o) => o.type === 'recompress' && o.params.codec === 'zstd');
    assert.ok(op >= 0);
    table[findZstdLevelByte(table, (d.ops[op] as { path: string }).path)] = 22;
    fs.writeFileSync(p('level22.ibudelta'), sealDelta({ ...parts, table }));
    await assert.rejects(applyDelta({ sourceImage: A, delta: p('level22.ibudelta'), out: p('out3.img') }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'DELTA_INVALID');
      assert.match(e.message, /encoder settings/);
      return true;
    });
    assert.equal(fs.existsSync(p('out3.img.partial')), false);
  });

  it('a modified old initramfs is named (DELTA_SOURCE_MODIFIED) and OUT is untouched', async () => {
    fs.copyFileSync(A, p('a-mod.img'));
    const r = Ext4Reader.open(p('a-mod.img'));
    const ext = r.extents('/boot/initrd.img-6.12.117+deb13-amd64')[0]!;
    const bs = r.blockSize;
    r.close();
    const fd = fs.openSync(p('a-mod.img'), 'r+');
    fs.writeSync(fd, Buffer.from('modified'), 0, 8, ext.physical * bs + 3000);
    fs.closeSync(fd);
    await assert.rejects(applyDelta({ sourceImage: p('a-mod.img'), delta: p('rc.ibudelta'), out: p('out4.img') }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'DELTA_SOURCE_MODIFIED');
      assert.match(e.message, /initrd\.img-6\.12\.118/);
      return true;
    });
    assert.equal(fs.existsSync(p('out4.img')), false);
  });
});

/**
 * The offset of the level byte of the first zstd RECOMPRESS record for `file` in a decoded op
 * table: the record ends with u8 codec (3), u8 level, u8 check, u8 threads, u32 dict, then the
 * path as u16 length + bytes.
 */
function findZstdLevelByte(table: Buffer, file: string): number {
  const name = Buffer.from(file);
  const len = Buffer.alloc(2);
  len.writeUInt16LE(name.length);
  const needle = Buffer.concat([len, name]);
  for (let at = table.indexOf(needle); at >= 0; at = table.indexOf(needle, at + 1)) {
    if (table[at - 8] === 3) return at - 7;
  }
  throw new Error(`no zstd RECOMPRESS record for ${file}`);
}
