/**
 * The cost of dm-verity (issue #22): tree size, boot time and read throughput with and without
 * verity, on the QEMU model device (busybox initramfs --verity, TCG, -smp 1).
 *
 *   npm run bench:verity            (root; builds its media under /tmp, needs scripts/e2e-setup.sh's cache)
 *
 * One 64 MiB read-only image (busybox root + kernel + initrd + 16 MiB payload) with its tree
 * appended by src/image/verity.ts. Boot A: with the verity record (the root through dm-verity);
 * boot B: the record removed (plain read-only loop device, the image fsck'd as before): the
 * anchor, same disk, same run. In each boot the image's init (test/e2e/image-init.sh, flag file
 * /ibu-e2e/bench-verity on the host) reads the same 32 MiB five times through dm-verity and
 * straight from its loop device, alternating, page cache dropped before each read: the median of
 * each is the read throughput with and without verity under the same load. Boot time: the
 * initramfs' own clock (uptime) from its start to switch_root, and the verity steps inside it.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appendVerityTree } from '../src/image/verity.js';
import { seededBytes } from '../test/helpers/ext4-images.js';
import { kernelKit, buildInitramfs, buildEfi, buildBusyboxImage, writeGrubCfg, createGrubenv, makeDisk, HostFs, boot } from '../test/e2e/harness.js';

const IMG_MIB = 64;
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-bench-verity-'));
  try {
    const kit = await kernelKit();
    const initrd = path.join(work, 'initrd.img');
    await buildInitramfs(kit, initrd, [], { verity: true });
    const efi = path.join(work, 'BOOTX64.EFI');
    await buildEfi(efi);
    const hostTree = path.join(work, 'host-tree');
    await fsp.mkdir(path.join(hostTree, 'images/.ibu/verity'), { recursive: true });
    await fsp.mkdir(path.join(hostTree, 'ibu-e2e'), { recursive: true });
    await fsp.writeFile(path.join(hostTree, 'ibu-e2e/bench-verity'), '1\n');
    const img = path.join(hostTree, 'images/1.img');
    await buildBusyboxImage(path.join(work, 'stage'), img, {
      version: '1',
      variant: 'verity',
      kit,
      initrd,
      sizeMiB: IMG_MIB,
      change: async (st) => {
        await fsp.mkdir(path.join(st, 'usr/share/ibu-e2e'), { recursive: true });
        await fsp.writeFile(path.join(st, 'usr/share/ibu-e2e/payload.bin'), seededBytes(16 * 1024 * 1024, 5));
        await fsp.mkdir(path.join(st, 'usr/lib/ibu'), { recursive: true });
        await fsp.writeFile(path.join(st, 'usr/lib/ibu/readonly'), 'readonly\n');
        await fsp.mkdir(path.join(st, 'var/lib'), { recursive: true });
      },
    });
    const t0 = performance.now();
    const v = await appendVerityTree(img, { product: 'ibu', version: '1' });
    const formatMs = performance.now() - t0;
    await fsp.writeFile(path.join(hostTree, 'images/.ibu/verity/1'), `${v.rootHash} ${v.hashOffset}\n`);
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1');
    const disk = path.join(work, 'disk.img');
    const offset = await makeDisk({ efi, hostTree, hostMiB: 256, out: disk });
    const host = new HostFs(disk, offset, work);
    console.log(
      `tree: ${v.treeBytes} bytes for a ${IMG_MIB} MiB image = ${((100 * v.treeBytes) / v.hashOffset).toFixed(3)} % (veritysetup format ${formatMs.toFixed(0)} ms)`,
    );
    console.log(
      `load before the boots: ${os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')} (${os.cpus().length} cores)`,
    );

    const results: Record<string, { boot: number; steps: string; reads: Record<string, number[]> }> = {};
    for (const [name, verity] of [
      ['verity', true],
      ['plain', false],
    ] as const) {
      if (!verity) await host.putFile('/images/.ibu/verity/1', null);
      const res = await boot({ disk, logFile: path.join(work, `${name}.log`), timeoutMs: 1_200_000 });
      const stamp = (re: RegExp): number => Number(re.exec(res.log)?.[1] ?? NaN);
      const start = stamp(/\[ibu-initramfs ([\d.]+)s\] starting/);
      const sw = stamp(/\[ibu-initramfs ([\d.]+)s\] switch_root/);
      const skip = stamp(/\[ibu-initramfs ([\d.]+)s\] fsck image .* skipped/);
      const fsckImg = stamp(/\[ibu-initramfs ([\d.]+)s\] fsck image \/images\/1\.img: e2fsck/);
      const opened = stamp(/\[ibu-initramfs ([\d.]+)s\] dm-verity: /);
      const mounted = stamp(/\[ibu-initramfs ([\d.]+)s\] mounted /);
      const overlays = stamp(/\[ibu-initramfs ([\d.]+)s\] read-only image /);
      const steps = verity
        ? `veritysetup open ${(opened - skip).toFixed(2)} s, kernel+initrd read back ${(overlays - mounted).toFixed(2)} s`
        : `image fsck + losetup + mount ${(mounted - fsckImg).toFixed(2)} s`;
      const reads: Record<string, number[]> = {};
      for (const m of res.log.matchAll(/IBU-E2E BENCH run=\d+ dev=(\S+) start=([\d.]+) end=([\d.]+)/g)) {
        (reads[m[1]!.includes('mapper') ? 'through dm-verity' : 'loop device'] ??= []).push(Number(m[3]) - Number(m[2]));
      }
      results[name] = { boot: sw - start, steps, reads };
      console.log(`${name}: initramfs start → switch_root ${(sw - start).toFixed(2)} s (${steps}); qemu exit ${res.code}`);
      for (const [dev, xs] of Object.entries(reads))
        console.log(
          `  32 MiB read ${dev}: median ${median(xs).toFixed(2)} s = ${(32 / median(xs)).toFixed(1)} MiB/s (runs: ${xs.map((x) => x.toFixed(2)).join(' ')})`,
        );
    }
    console.log(
      `load after: ${os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')}`,
    );
  } finally {
    if (process.env.IBU_BENCH_KEEP !== '1') await fsp.rm(work, { recursive: true, force: true });
    else console.log(`kept ${work}`);
  }
}

await main();
