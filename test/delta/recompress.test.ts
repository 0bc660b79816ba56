/**
 * RECOMPRESS ops (issue #20): changed xz and gzip files travel uncompressed and the device
 * compresses them again. Real streams from the system `xz` and `gzip` (kbuild's module
 * settings, Debian's `gzip -9n`), real mke2fs images, real apply: the result must be the
 * target bit for bit; files whose settings cannot be reproduced fall back to PATCH; a wrong
 * encoder version and a modified source file are refused with their codes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { codecOf, encoderArgs, gzipFacts, paramsValid, xzFacts } from '../../src/delta/compressed-stream.js';
import { applyDelta, makeDelta, readDelta } from '../../src/delta/index.js';
import { Ext4Reader } from '../../src/image/ext4/index.js';
import { binaryish, imageJson, makeImage, mutate, tempDir, writeTree, type TreeEntry } from './fixture.js';
import { sealDelta, splitDelta } from './fuzz-mutants.js';
import { zstdCompress } from '../../src/delta/zstd-recompress.js';

/** What kbuild runs for a module (`scripts/Makefile.modinst`), multi-threaded as xz ≥ 5.6 is by default. */
const KBUILD_XZ = ['-T2', '--check=crc32', '--lzma2=dict=1MiB'];
const xz = (data: Buffer, args = KBUILD_XZ): Buffer => execFileSync('xz', [...args, '-c'], { input: data, maxBuffer: 1 << 28 });
const gzip = (data: Buffer, args = ['-9n']): Buffer => execFileSync('gzip', [...args, '-c'], { input: data, maxBuffer: 1 << 28 });
/** `gzip -9 NAME`: the member stores the file name and a fixed time, which `gzip -n` does not reproduce. */
function gzipNamed(data: Buffer): Buffer {
  const dir = tempDir('ibu-gz-named-');
  try {
    const f = path.join(dir.dir, 'named.txt');
    fs.writeFileSync(f, data);
    fs.utimesSync(f, 1700000000, 1700000000);
    execFileSync('gzip', ['-9', f]);
    return fs.readFileSync(`${f}.gz`);
  } finally {
    dir.cleanup();
  }
}
/** Text that compresses like a changelog. */
const text = (seed: number, n: number): Buffer =>
  Buffer.from(
    Array.from(binaryish(seed, n / 8))
      .map((b) => `word${b % 97} `)
      .join('')
      .slice(0, n),
  );

describe('compressed-stream: settings from the stream headers', () => {
  const raw = binaryish(1, 200_000);

  it('reads kbuild xz settings (crc32, 1 MiB dictionary, multi-threaded block headers) and the size from the index', () => {
    const f = xzFacts(xz(raw));
    assert.deepEqual(f, { params: { codec: 'xz', level: 6, check: 1, dict: 1 << 20, threads: 2 }, rawLength: raw.length });
    // Single-threaded mode leaves the sizes out of the block header: another setting, reproduced too.
    assert.equal(xzFacts(xz(raw, ['-T1', '--check=crc64']))?.params.threads, 1);
    assert.equal(xzFacts(xz(raw, ['-T1', '--check=crc64']))?.params.check, 4);
  });

  it('the settings found reproduce the stream bit for bit', () => {
    for (const args of [KBUILD_XZ, ['-T1'], ['-T2', '--check=sha256']]) {
      const f = xz(raw, args);
      const p = xzFacts(f)!.params;
      assert.ok(paramsValid(p));
      assert.ok(xz(raw, encoderArgs(p)).equals(f), `xz ${args.join(' ')}`);
    }
    const g = gzip(text(2, 50_000));
    assert.ok(gzip(text(2, 50_000), encoderArgs(gzipFacts(g)!.params)).equals(g));
  });

  it('refuses what it cannot describe: a BCJ filter, two streams, a gzip name, other formats', () => {
    assert.equal(xzFacts(xz(raw, ['--x86', '--lzma2'])), undefined);
    assert.equal(xzFacts(Buffer.concat([xz(raw), xz(raw)])), undefined);
    assert.equal(xzFacts(xz(raw, ['-T2', '-9'])), undefined, 'a 64 MiB dictionary: more than a device should spend');
    assert.equal(xzFacts(xz(raw).subarray(0, 100)), undefined);
    assert.equal(gzipFacts(gzipNamed(text(3, 1000))), undefined);
    assert.equal(gzipFacts(gzip(text(3, 1000)))?.params.level, 9);
    assert.equal(gzipFacts(gzip(text(3, 1000), ['-1n']))?.params.level, 1);
    assert.equal(codecOf(Buffer.from('\x28\xb5\x2f\xfd'.padEnd(20, '\0'), 'latin1')), 'zstd');
    assert.equal(codecOf(raw), undefined);
  });

  it('multi-threaded zstd writes the same bytes with one worker as with several (apply uses one to save memory)', () => {
    const raw = Buffer.alloc(40 << 20); // over one job (4 windows at -9), so two workers really split it
    for (let i = 0; i < raw.length; i += 4093) raw.writeUInt32LE((i * 2654435761) >>> 0, i);
    const p = { codec: 'zstd', level: 9, check: 1, threads: 1, dict: 0 } as const;
    assert.ok(zstdCompress(p, raw, 1).equals(zstdCompress(p, raw, 2)));
  });

  it('refuses encoder settings a hostile delta could name', () => {
    const ok = { codec: 'xz' as const, level: 6, check: 1, dict: 1 << 20, threads: 2 };
    assert.ok(paramsValid(ok));
    for (const bad of [
      { level: 0 },
      { level: 10 },
      { check: 3 },
      { dict: 1 << 30 },
      { dict: 64 << 20 },
      { dict: 100 },
      { threads: 0 },
      { threads: 3 },
      { level: 1.5 },
    ]) {
      assert.equal(paramsValid({ ...ok, ...bad }), false, JSON.stringify(bad));
    }
    assert.equal(paramsValid({ codec: 'gzip', level: 9, check: 0, dict: 0, threads: 0 }), true);
    assert.equal(paramsValid({ codec: 'gzip', level: 9, check: 1, dict: 0, threads: 0 }), false);
  });
});

describe('delta make --recompress / apply', () => {
  const tmp = tempDir('ibu-delta-recompress-');
  const p = (n: string): string => path.join(tmp.dir, n);
  const A = p('a.img');
  const B = p('b.img');
  const MODULES = 12;
  const modA = Array.from({ length: MODULES }, (_, i) => binaryish(100 + i, 20_000 + i * 9_000));
  const docA = text(7, 120_000);
  const bigA = binaryish(50, 150_000);

  function tree(v: 'a' | 'b'): Record<string, TreeEntry> {
    const abi = v === 'a' ? '6.12.117+deb13-amd64' : '6.12.118+deb13-amd64';
    const t: Record<string, TreeEntry> = {
      'etc/ibu/image.json': imageJson(v === 'a' ? '1.0' : '1.1'),
      // Debian's changelogs: gzip -9n.
      'usr/share/doc/pkg/changelog.Debian.gz': gzip(v === 'a' ? docA : Buffer.concat([text(8, 3000), docA])),
      // A gzip that stored a file name: gzip -n cannot reproduce it, so it stays a PATCH.
      'usr/share/doc/pkg/named.gz': gzipNamed(v === 'a' ? docA : mutate(docA, 9)),
      // xz -6e: the headers show the dictionary but not the extreme flag, so recompression does not reproduce it.
      'usr/share/big.xz': xz(v === 'a' ? bigA : mutate(bigA, 10), ['-T2', '-6e']),
    };
    modA.forEach((m, i) => {
      // A new kernel ABI: every module moves to a new directory, with a few bytes changed inside.
      t[`usr/lib/modules/${abi}/kernel/m${i}.ko.xz`] = xz(v === 'a' ? m : mutate(m, 200 + i, 3, 16));
    });
    return t;
  }

  before(async () => {
    writeTree(p('ta'), tree('a'));
    writeTree(p('tb'), tree('b'));
    await makeImage(p('ta'), A, { size: '16M' });
    await makeImage(p('tb'), B, { size: '16M' });
  });
  after(() => tmp.cleanup());

  it('recompressed modules and changelogs rebuild the target bit for bit, smaller than plain patches', async () => {
    const plain = await makeDelta({ fromImage: A, toImage: B, out: p('plain.ibudelta'), jobs: 2 });
    const rc = await makeDelta({ fromImage: A, toImage: B, out: p('rc.ibudelta'), jobs: 2, recompress: true });
    assert.equal(rc.ops.recompress, MODULES + 1, JSON.stringify(rc.ops)); // the modules and the changelog
    assert.equal(rc.files.recompressed, MODULES + 1);
    // named.gz (a stored name) is no candidate; big.xz is one whose recompression did not reproduce it.
    assert.deepEqual(rc.recompress, { candidates: MODULES + 2, reproduced: MODULES + 1, notReproduced: 1 });
    assert.equal(plain.ops.recompress, 0);
    assert.ok(rc.bytes * 2 < plain.bytes, `recompress ${rc.bytes} B vs plain ${plain.bytes} B`);

    const d = readDelta(p('rc.ibudelta'));
    assert.equal(d.header.format, 2);
    assert.deepEqual(Object.keys(d.header.encoders ?? {}).sort(), ['gzip', 'xz']);
    assert.equal(readDelta(p('plain.ibudelta')).header.format, 1, 'a delta without RECOMPRESS ops stays format 1');
    const mod = d.ops.find((o) => o.type === 'recompress' && o.path.endsWith('m3.ko.xz'));
    assert.ok(mod && mod.type === 'recompress');
    assert.match(mod.srcPath, /6\.12\.117\+deb13-amd64\/kernel\/m3\.ko\.xz$/, 'matched across the ABI rename');
    const big = d.ops.find((o) => 'path' in o && o.path === '/usr/share/big.xz');
    assert.equal(big?.type, 'patch', 'not reproduced: falls back to a PATCH');

    const r = await applyDelta({ sourceImage: A, delta: p('rc.ibudelta'), out: p('out.img') });
    assert.ok(fs.readFileSync(p('out.img')).equals(fs.readFileSync(B)));
    assert.equal(r.failedOps.length, 0);
  });

  it('refuses to apply with another encoder version than the delta names (TOOL_MISSING), before any output exists', async () => {
    const parts = splitDelta(fs.readFileSync(p('rc.ibudelta')));
    const h = JSON.parse(parts.json.toString()) as { encoders: Record<string, string> };
    h.encoders.xz = '0.0.1';
    parts.json = Buffer.from(JSON.stringify(h));
    fs.writeFileSync(p('wrong-xz.ibudelta'), sealDelta(parts));
    await assert.rejects(applyDelta({ sourceImage: A, delta: p('wrong-xz.ibudelta'), out: p('out2.img') }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'TOOL_MISSING');
      assert.match(e.message, /xz 0\.0\.1/);
      return true;
    });
    assert.equal(fs.existsSync(p('out2.img')), false);
    assert.equal(fs.existsSync(p('out2.img.partial')), false);
  });

  it('a modified old module is named (DELTA_SOURCE_MODIFIED) and OUT is untouched', async () => {
    fs.copyFileSync(A, p('a-mod.img'));
    const r = Ext4Reader.open(p('a-mod.img'));
    const ext = r.extents('/usr/lib/modules/6.12.117+deb13-amd64/kernel/m5.ko.xz')[0]!;
    const bs = r.blockSize;
    r.close();
    const fd = fs.openSync(p('a-mod.img'), 'r+');
    fs.writeSync(fd, Buffer.from('modified'), 0, 8, ext.physical * bs + 100);
    fs.closeSync(fd);
    await assert.rejects(applyDelta({ sourceImage: p('a-mod.img'), delta: p('rc.ibudelta'), out: p('out3.img') }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'DELTA_SOURCE_MODIFIED');
      assert.match(e.message, /RECOMPRESS \/usr\/lib\/modules\/6\.12\.118\+deb13-amd64\/kernel\/m5\.ko\.xz/);
      return true;
    });
    assert.equal(fs.existsSync(p('out3.img')), false);
  });
});
