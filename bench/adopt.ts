/**
 * Adoption download benchmark (docs/benchmarks.md, "## Adoption").
 *
 *   npm run bench:adopt          # RUNS=3; IBU_BENCH_ADOPT=/var/cache/ibu-bench/adopt
 *
 * Inputs (made once, cached): a conventional Debian 12 root, the mmdebstrap tarball of
 * test/e2e/make-conventional-disk.sh (minbase + systemd, kernel, grub-efi-amd64, openssh,
 * ifupdown), extracted; and two release images built from tarballs with `ibu image build --tar`:
 *   bookworm  the same package list from bookworm (a vendor whose image carries the machine's own release)
 *   trixie    the same package list from trixie (bookworm machines adopting trixie)
 *   appliance the trixie appliance, release 2.0 of examples/appliance built by `ibu build`
 *             (test/e2e/appliance.ts, from its cache): the image test/e2e/adopt.test.ts adopts
 * ADOPT_IMAGES=appliance (comma-separated) measures only those. Each image is published into a local store (default chunking). Measured, in one run and per
 * image: fetchRelease seeded from the live root (what `upgradectl adopt` does: src/release/live-seed.ts)
 * against the anchor, the same fetch without any seed (the full compressed image), alternating,
 * median of RUNS: bytes read from the store, bytes taken from the live root's files, seconds.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fetchRelease, type FetchResult } from '../src/release/fetch.js';
import { generateKeys } from '../src/release/keys.js';
import { Keyring } from '../src/release/keyring.js';
import { publishRelease } from '../src/release/publish.js';
import { LocalStore } from '../src/store/local-store.js';
import { run } from '../src/util/exec.js';
import { applianceReleases } from '../test/e2e/appliance.js';

const DIR = process.env.IBU_BENCH_ADOPT ?? '/var/cache/ibu-bench/adopt';
const RUNS = Number(process.env.RUNS ?? 3);
const WORK = path.join('/var/tmp', `ibu-bench-adopt-${process.pid}`);
const PKGS = 'systemd-sysv,udev,linux-image-amd64,initramfs-tools,grub-efi-amd64,ifupdown,openssh-server,e2fsprogs,kmod,iproute2,passwd';
const MB = 1e6;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
const load = (): string => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

async function tarball(suite: string): Promise<string> {
  const tar = path.join(DIR, `${suite}.tar`);
  if (!existsSync(tar)) {
    await run('mmdebstrap', ['--variant=minbase', `--include=${PKGS}`, suite, `${tar}.tmp.tar`, 'http://deb.debian.org/debian']);
    await run('mv', [`${tar}.tmp.tar`, tar]);
  }
  return tar;
}

const IMAGES = (process.env.ADOPT_IMAGES ?? 'bookworm,trixie,appliance').split(',');
const VERSION: Record<string, string> = { bookworm: '12.0', trixie: '13.0', appliance: '2.0' };

async function image(suite: string): Promise<string> {
  if (suite === 'appliance') return (await applianceReleases()).images['2.0'];
  const img = path.join(DIR, `${suite}.img`);
  if (!existsSync(img)) {
    const tar = await tarball(suite);
    await run('npx', [
      'tsx',
      'bench/lib/ibu-dev.ts',
      'image',
      'build',
      '--tar',
      tar,
      '--version',
      suite === 'bookworm' ? '12.0' : '13.0',
      '--size',
      '1536M',
      '--out',
      `${img}.tmp`,
    ]);
    await run('mv', [`${img}.tmp`, img]);
  }
  return img;
}

async function main(): Promise<void> {
  mkdirSync(DIR, { recursive: true });
  const live = path.join(DIR, 'conventional-bookworm');
  if (!existsSync(path.join(live, '.done'))) {
    rmSync(live, { recursive: true, force: true });
    mkdirSync(live);
    await run('tar', ['-C', live, '--numeric-owner', '-xpf', await tarball('bookworm')]);
    await run('touch', [path.join(live, '.done')]);
  }
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  const k = await generateKeys(path.join(WORK, 'keys'));
  mkdirSync(path.join(WORK, 'ring'));
  copyFileSync(k.publicKeyPath, path.join(WORK, 'ring/k.pub'));
  const ring = await Keyring.load(path.join(WORK, 'ring'));
  const out: Record<string, unknown> = {
    machine: `${os.cpus().length} cores, ${os.cpus()[0]?.model}, ${os.type()} ${os.release()}, node ${process.version}`,
    runs: RUNS,
  };
  console.log(out);
  for (const suite of IMAGES) {
    const img = await image(suite);
    const version = VERSION[suite]!;
    const store = new LocalStore(path.join(WORK, `store-${suite}`));
    const pub = await publishRelease({ image: img, version, store, keyFiles: [k.privateKeyPath], requireKernel: false });
    const seeded: FetchResult[] = [];
    const full: FetchResult[] = [];
    const loads: string[] = [];
    for (let r = 0; r < RUNS; r++) {
      for (const mode of ['seeded', 'full'] as const) {
        const o = path.join(WORK, `${suite}-${mode}.img`);
        rmSync(o, { force: true });
        const res = await fetchRelease({ store, version, keyring: ring, out: o, ...(mode === 'seeded' ? { liveRoot: live } : {}) });
        (mode === 'seeded' ? seeded : full).push(res);
        rmSync(o, { force: true });
      }
      loads.push(load());
      console.log(suite, 'run', r, { seeded: seeded[r]!.seconds, full: full[r]!.seconds, load: loads[r] });
    }
    const s = seeded[0]!;
    const row = {
      image: { file: img, size: statSync(img).size, allocated: statSync(img).blocks * 512, chunks: pub.chunks, storedBytes: pub.storedBytes },
      seeded: {
        downloadedBytes: s.downloadedBytes,
        liveSeedBytes: s.liveSeed?.bytes,
        filesMatched: s.liveSeed?.filesMatched,
        chunkHits: s.liveSeed?.chunkHits,
        medianSeconds: median(seeded.map((x) => x.seconds)),
        runs: seeded.map((x) => +x.seconds.toFixed(1)),
      },
      full: { downloadedBytes: full[0]!.downloadedBytes, medianSeconds: median(full.map((x) => x.seconds)), runs: full.map((x) => +x.seconds.toFixed(1)) },
      loadAverages: loads,
    };
    out[suite] = row;
    console.log(suite, JSON.stringify(row, null, 2));
    console.log(
      `${suite}: adoption downloads ${(s.downloadedBytes / MB).toFixed(1)} MB of ${(full[0]!.downloadedBytes / MB).toFixed(1)} MB ` +
        `(${((100 * s.downloadedBytes) / full[0]!.downloadedBytes).toFixed(1)} %), ${((s.liveSeed?.bytes ?? 0) / MB).toFixed(1)} MB from the live root`,
    );
  }
  rmSync(WORK, { recursive: true, force: true });
  console.log(JSON.stringify(out));
}

await main();
