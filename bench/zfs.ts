/**
 * ZFS transport benchmark (issue 9, docs/zfs.md): on the real Debian pair from
 * bench/lib/debian-images.sh (base.img 2026.11.1 → security.img 2026.11.2, 2 GiB each) measures
 *   - bytes: the `zfs send -i` stream (raw, zstd -3 as served, zstd -19) vs the ibu delta vs the
 *     chunks a device fetches with base.img as seed (compressed manifest + chunks);
 *   - time to verify + `zfs recv` + export the image (sparse, sha256 checked) vs `applyDelta`
 *     (sha256 checked), both in the same QEMU guest run, median of RUNS.
 * The byte counts come from the host part (they do not depend on the machine); the ZFS part and
 * both timings run inside the ZFS test guest (TCG: ZFS exists only there on these machines).
 *
 *   npm run bench:zfs [-- --runs 3] [--images DIR] [--json FILE]
 *   (in the guest it runs itself as `node dist/bench/zfs.js --guest`)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}
const RUNS = Number(arg('runs', '3'));
const IMAGES = arg('images', '/var/cache/ibu-bench/images');
const JSON_OUT = arg('json', '');
const FROM = '2026.11.1';
const TO = '2026.11.2';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
const mb = (n: number): string => `${(n / 1e6).toFixed(2)} MB`;
const sh = (cmd: string): string => execFileSync('bash', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();

interface GuestResult {
  zvolWrite: {
    base: { seconds: number; written: number; blocks: number };
    security: { seconds: number; written: number; zeroed: number; unchanged: number; blocks: number };
  };
  stream: { raw: number; zstd3: number; zstd19: number; sha256: string; deterministic: boolean; sendSeconds: number };
  receive: Array<{ verify: number; receive: number; export: number; total: number }>;
  deltaApply: number[];
}

/** Inside the guest: runScenarioGuest made pools rpool (release) and dpool (device), work disk on /w. */
async function guest(): Promise<void> {
  const share = arg('share', '/share');
  const { writeImageToZvol } = await import('../src/zfs/zvol.js');
  const { zfsSend, buildCompressedStream } = await import('../src/zfs/stream.js');
  const { receiveRelease } = await import('../src/zfs/receive.js');
  const { zvolDevice, zfsGet } = await import('../src/zfs/tools.js');
  const { applyDelta } = await import('../src/delta/index.js');
  const { parseManifestUnverified } = await import('../src/release/manifest.js');
  const log = (s: string): void => void process.stderr.write(`bench: ${s}\n`);
  sh('zpool list rpool dpool >/dev/null && mountpoint -q /w'); // set up by runScenarioGuest
  const size = fs.statSync(path.join(IMAGES, 'base.img')).size;
  sh(`zfs create -s -V ${size} -o volblocksize=8192 -o compression=lz4 rpool/os`);
  const dev = await zvolDevice('rpool/os');
  let t = performance.now();
  const wb = await writeImageToZvol(path.join(IMAGES, 'base.img'), dev, 8192);
  const baseSec = (performance.now() - t) / 1000;
  sh(`zfs snapshot rpool/os@${FROM}`);
  log(`base written in ${baseSec.toFixed(1)} s`);
  t = performance.now();
  const ws = await writeImageToZvol(path.join(IMAGES, 'security.img'), dev, 8192);
  const secSec = (performance.now() - t) / 1000;
  sh(`zfs snapshot rpool/os@${TO}`);
  log(`security written in ${secSec.toFixed(1)} s: ${JSON.stringify(ws)}`);
  t = performance.now();
  const s1 = await zfsSend('rpool/os', FROM, TO, null);
  const sendSeconds = (performance.now() - t) / 1000;
  const s2 = await zfsSend('rpool/os', FROM, TO, null);
  const ref = { from: FROM, fromGuid: (await zfsGet(`rpool/os@${FROM}`, 'guid'))!, size: s1.size, sha256: s1.sha256 };
  const zst = '/w/stream.zst';
  const c = await buildCompressedStream({ dataset: 'rpool/os', from: FROM, to: TO, expect: ref, out: zst, level: 3 });
  const z19 = Number(sh(`zfs send -i @${FROM} rpool/os@${TO} | zstd -q -19 -T0 -c | wc -c`));
  log(`stream ${s1.size} raw, ${c.compressedSize} zstd-3, ${z19} zstd-19`);
  const m = parseManifestUnverified(fs.readFileSync(path.join(share, 'security.manifest.json')));
  m.zfs = { dataset: 'rpool/os', guid: (await zfsGet(`rpool/os@${TO}`, 'guid'))!, volsize: size, volblocksize: 8192, streams: [ref] };
  sh(`zfs send rpool/os@${FROM} | zfs recv dpool/os`);
  sh(`cp --sparse=always ${path.join(IMAGES, 'base.img')} /w/base.img && cp ${path.join(share, 'delta.ibudelta')} /w/delta.ibudelta`);
  const receive: GuestResult['receive'] = [];
  const deltaApply: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    if ((await zfsGet(`dpool/os@${TO}`, 'guid')) !== null) sh(`zfs destroy dpool/os@${TO} && zfs rollback dpool/os@${FROM}`);
    sh('sync; echo 3 > /proc/sys/vm/drop_caches');
    t = performance.now();
    const r = await receiveRelease({ file: zst, manifest: m, from: FROM, dataset: 'dpool/os', out: '/w/zfs-out.img' });
    receive.push({ ...r.seconds, total: (performance.now() - t) / 1000 });
    fs.rmSync('/w/zfs-out.img');
    log(`receive run ${i + 1}: ${JSON.stringify(receive[i])}`);
    sh('sync; echo 3 > /proc/sys/vm/drop_caches');
    t = performance.now();
    await applyDelta({ sourceImage: '/w/base.img', delta: '/w/delta.ibudelta', out: '/w/delta-out.img', manifest: m });
    deltaApply.push((performance.now() - t) / 1000);
    fs.rmSync('/w/delta-out.img');
    log(`delta apply run ${i + 1}: ${deltaApply[i]!.toFixed(1)} s`);
  }
  const out: GuestResult = {
    zvolWrite: { base: { seconds: baseSec, written: wb.written, blocks: wb.blocks }, security: { seconds: secSec, ...ws } },
    stream: { raw: s1.size, zstd3: c.compressedSize, zstd19: z19, sha256: s1.sha256, deterministic: s1.sha256 === s2.sha256, sendSeconds },
    receive,
    deltaApply,
  };
  process.stdout.write(`IBU-ZFS-BENCH ${JSON.stringify(out)}\n`);
}

async function host(): Promise<void> {
  const { zfsUnavailable, repoRoot, runScenarioGuest, signingKeyring } = await import('../test/zfs/harness.js');
  const why = zfsUnavailable();
  if (why) throw new Error(`the ZFS guest is not available: ${why}`);
  const repo = repoRoot();
  for (const n of ['base', 'security']) {
    if (!fs.existsSync(path.join(IMAGES, `${n}.img`))) execFileSync('bash', [path.join(repo, 'bench', 'lib', 'debian-images.sh'), n], { stdio: 'inherit' });
  }
  const { publishRelease } = await import('../src/release/publish.js');
  const { fetchRelease } = await import('../src/release/fetch.js');
  const { Keyring } = await import('../src/release/keyring.js');
  const { LocalStore } = await import('../src/store/local-store.js');
  const { makeDelta } = await import('../src/delta/index.js');
  // --work DIR keeps the host part (store, delta) for a re-run of the guest part.
  const keep = arg('work', '');
  const work = keep || fs.mkdtempSync(path.join(os.tmpdir(), 'ibu-bench-zfs-'));
  try {
    const share = path.join(work, 'share');
    const hostJson = path.join(work, 'host.json');
    let f: { downloadedBytes: number };
    let d: { bytes: number };
    if (fs.existsSync(hostJson)) {
      ({ f, d } = JSON.parse(fs.readFileSync(hostJson, 'utf8')) as { f: { downloadedBytes: number }; d: { bytes: number } });
    } else {
      fs.mkdirSync(share, { recursive: true });
      await signingKeyring(path.join(work, 'keys'), path.join(work, 'keyring'));
      const store = new LocalStore(path.join(work, 'store'));
      const key = [path.join(work, 'keys', 'signing.key')];
      console.error('publishing base and security (chunks) ...');
      await publishRelease({ image: path.join(IMAGES, 'base.img'), version: FROM, store, keyFiles: key });
      await publishRelease({ image: path.join(IMAGES, 'security.img'), version: TO, store, keyFiles: key });
      console.error('fetching security seeded with base ...');
      f = await fetchRelease({
        store,
        version: TO,
        keyring: await Keyring.load(path.join(work, 'keyring')),
        out: path.join(work, 'fetched.img'),
        seeds: [path.join(IMAGES, 'base.img')],
      });
      fs.rmSync(path.join(work, 'fetched.img'));
      console.error('making the ibu delta ...');
      d = await makeDelta({ fromImage: path.join(IMAGES, 'base.img'), toImage: path.join(IMAGES, 'security.img'), out: path.join(share, 'delta.ibudelta') });
      fs.copyFileSync(path.join(work, 'store', 'releases', TO, 'manifest.json'), path.join(share, 'security.manifest.json'));
      fs.writeFileSync(hostJson, JSON.stringify({ f: { downloadedBytes: f.downloadedBytes }, d: { bytes: d.bytes } }));
    }
    const script = `set -e\ncd '${repo}'\nnode dist/bench/zfs.js --guest --runs ${RUNS} --images '${IMAGES}' --share /share\n`;
    console.error('booting the ZFS guest (TCG) ...');
    const t0 = Date.now();
    const r = await runScenarioGuest(work, { releaseMiB: 4096, deviceMiB: 4096, workMiB: 8192 }, { script, share, timeoutMs: 120 * 60_000, memMiB: 3072 });
    const line = r.log.split('\n').find((l) => l.startsWith('IBU-ZFS-BENCH '));
    if (!line)
      throw new Error(
        `the guest printed no result (exit ${String(r.exitCode)}${r.timedOut ? ', timed out' : ''}); log: ${r.logFile}\n${r.log.split('\n').slice(-40).join('\n')}`,
      );
    const g = JSON.parse(line.slice('IBU-ZFS-BENCH '.length)) as GuestResult;
    const res = {
      machine: `${os.cpus().length}-core host, ${os.cpus()[0]?.model ?? '?'}; numbers marked guest: QEMU TCG guest (no KVM), Debian 6.1 kernel, ZFS 2.1.11`,
      guestSeconds: (Date.now() - t0) / 1000,
      bytes: { zfsRaw: g.stream.raw, zfsZstd3: g.stream.zstd3, zfsZstd19: g.stream.zstd19, ibuDelta: d.bytes, chunksFetched: f.downloadedBytes },
      deterministic: g.stream.deterministic,
      zvolWrite: g.zvolWrite,
      receiveTotal: median(g.receive.map((x) => x.total)),
      receiveRuns: g.receive,
      deltaApply: median(g.deltaApply),
      deltaApplyRuns: g.deltaApply,
    };
    console.log(
      `bytes for ${FROM} → ${TO}: zfs stream raw ${mb(res.bytes.zfsRaw)}, zstd-3 ${mb(res.bytes.zfsZstd3)}, zstd-19 ${mb(res.bytes.zfsZstd19)}; ibu delta ${mb(res.bytes.ibuDelta)}; chunks fetched ${mb(res.bytes.chunksFetched)}`,
    );
    console.log(
      `guest (TCG): verify+recv+export median ${res.receiveTotal.toFixed(1)} s (${g.receive.map((x) => x.total.toFixed(1)).join(', ')}); ibu delta apply median ${res.deltaApply.toFixed(1)} s (${g.deltaApply.map((x) => x.toFixed(1)).join(', ')})`,
    );
    console.log(JSON.stringify(res, null, 2));
    if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(res, null, 2));
  } finally {
    if (!keep) fs.rmSync(work, { recursive: true, force: true });
  }
}

(process.argv.includes('--guest') ? guest() : host()).catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
