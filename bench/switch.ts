/**
 * Switch downtime benchmark (issue #18 item 7) on the e2e model device: a full reboot (firmware,
 * GRUB, kernel, initramfs) against kexec (kernel, initramfs), alternating in ONE QEMU run so both
 * see the same machine load; the reboot is the anchor. Downtime = from the serial line printed
 * right before the switch command (`reboot -f` / `kexec -e`) to the new image's init running
 * (node-init.sh's `IBU-E2E RUNNING`): the model device has no vendor service, so its init stands
 * for "active on the new image". The reboot is split into firmware + GRUB (switch → GRUB's
 * `ibu: booting image`) and the rest. soft-reboot needs systemd 257 (the Debian 13 appliance of
 * issue #17) and is not measured here. Two images (1.0, 2.0) with the same kernel; each kexec
 * switches to the other one with the command line GRUB would give it.
 *
 *   npm run bench:switch [-- --runs 5] [--json FILE]
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { boot, bootMedia, buildImage, createGrubenv, makeDisk, stageNodeRoot, writeGrubCfg } from '../test/e2e/harness.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}
const RUNS = Number(arg('runs', '5'));
const JSON_OUT = arg('json', '');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

// On every boot: count, then switch by kexec (even) or reboot -f (odd) until 2*RUNS switches.
// The agent's confirm marks each boot good first (GRUB counts boots until then; not measured).
const RUN_SH = (total: number) => `
node /opt/ibu/bin/upgradectl --config /host/ibu-e2e/agent.json confirm
n=$(cat /host/bench/n 2>/dev/null || echo 0)
[ "$n" -ge ${total} ] && { echo "IBU-BENCH done"; exit 0; }
mkdir -p /host/bench; echo $((n+1)) > /host/bench/n; sync
if [ "$IBU_E2E_VERSION" = 1.0 ]; then o=2.0; else o=1.0; fi
if [ $((n % 2)) = 0 ]; then
  mount -o loop,ro /host/images/$o.img /mnt
  cl=$(sed -e "s#loop=/images/[^ ]*#loop=/images/$o.img#" -e 's/ibu\\.[a-z]*=[^ ]*//g' -e 's/BOOT_IMAGE=[^ ]*//' /proc/cmdline)
  kexec -l /mnt/vmlinuz --initrd=/mnt/initrd.img --command-line="$cl ibu.version=$o ibu.trial=0"
  umount /mnt
  echo "IBU-BENCH switch kexec n=$n"
  kexec -e
else
  echo "IBU-BENCH switch reboot n=$n"
  reboot -f
fi
sleep 600
`;

interface Sample {
  method: 'kexec' | 'reboot';
  downtime: number;
  /** reboot: switch → GRUB boots the image (firmware + GRUB); kexec: 0 by construction. */
  firmwareGrub: number | null;
}

function samples(log: string): Sample[] {
  const lines = log.split('\n').map((l) => {
    const m = /^\[\s*([\d.]+)\] (.*)$/.exec(l);
    return m ? { t: Number(m[1]), s: m[2]! } : null;
  });
  const out: Sample[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = lines[i] && /IBU-BENCH switch (kexec|reboot)/.exec(lines[i]!.s);
    if (!m) continue;
    const t0 = lines[i]!.t;
    let grub: number | null = null;
    for (let k = i + 1; k < lines.length; k++) {
      const l = lines[k];
      if (!l) continue;
      if (grub === null && /ibu: booting image/.test(l.s)) grub = l.t - t0;
      if (/IBU-E2E RUNNING/.test(l.s)) {
        out.push({ method: m[1] as Sample['method'], downtime: l.t - t0, firmwareGrub: m[1] === 'reboot' ? grub : null });
        break;
      }
    }
  }
  return out;
}

async function main(): Promise<void> {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-bench-switch-'));
  try {
    const { kit, initrd, efi } = await bootMedia(work);
    const stage = path.join(work, 'stage');
    const hostTree = path.join(work, 'host');
    await fsp.mkdir(path.join(hostTree, 'images'), { recursive: true });
    await stageNodeRoot(stage, { version: '1.0', kit, initrd });
    await buildImage(stage, path.join(hostTree, 'images/1.0.img'), '1.0', 256);
    await fsp.writeFile(path.join(stage, 'etc/ibu-e2e/version'), '2.0\n');
    await buildImage(stage, path.join(hostTree, 'images/2.0.img'), '2.0', 256);
    await fsp.rm(stage, { recursive: true, force: true });
    await fsp.mkdir(path.join(hostTree, 'ibu-e2e'), { recursive: true });
    await fsp.writeFile(path.join(hostTree, 'ibu-e2e/run.sh'), RUN_SH(2 * RUNS));
    await fsp.writeFile(path.join(hostTree, 'ibu-e2e/agent.json'), JSON.stringify({ keyring: '/host/ibu-e2e', checkpoint: 'sync' }));
    await writeGrubCfg(hostTree);
    await createGrubenv(hostTree, '1.0');
    const disk = path.join(work, 'disk.img');
    await makeDisk({ efi, hostTree, hostMiB: 1024, out: disk });
    const load0 = os.loadavg();
    const res = await boot({ disk, logFile: path.join(work, 'bench.log'), memMiB: 1024, timeoutMs: 3_600_000 });
    const load1 = os.loadavg();
    const all = samples(res.log);
    const k = all.filter((s) => s.method === 'kexec');
    const r = all.filter((s) => s.method === 'reboot');
    const result = {
      runs: RUNS,
      machine: `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${kit.kver}, QEMU TCG -smp 1 -m 1024, OVMF`,
      loadavg: { start: load0.map((x) => x.toFixed(1)), end: load1.map((x) => x.toFixed(1)) },
      reboot: { downtime: r.map((s) => s.downtime), median: median(r.map((s) => s.downtime)), firmwareGrubMedian: median(r.map((s) => s.firmwareGrub ?? NaN)) },
      kexec: { downtime: k.map((s) => s.downtime), median: median(k.map((s) => s.downtime)) },
    };
    console.log(JSON.stringify(result, null, 2));
    console.log(
      `reboot: median ${result.reboot.median.toFixed(1)} s (firmware + GRUB ${result.reboot.firmwareGrubMedian.toFixed(1)} s); ` +
        `kexec: median ${result.kexec.median.toFixed(1)} s; saved ${(result.reboot.median - result.kexec.median).toFixed(1)} s`,
    );
    if (JSON_OUT) await fsp.writeFile(JSON_OUT, JSON.stringify(result, null, 2));
    if (k.length < RUNS || r.length < RUNS) throw new Error(`only ${k.length} kexec and ${r.length} reboot samples; log: ${res.logFile}`);
  } finally {
    if (process.env.IBU_BENCH_KEEP !== '1') await fsp.rm(work, { recursive: true, force: true });
    else console.log(`kept ${work}`);
  }
}

await main();
