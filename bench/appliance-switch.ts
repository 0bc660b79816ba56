/**
 * Switch downtime on the real appliance (issue #18 item 7): 2.0 -> 4.0 of examples/appliance
 * (Debian 13, systemd 257, the same kernel and initrd in both, acme-agent 1.1 -> 1.3) by a full
 * `reboot` (OVMF, GRUB, kernel, initramfs), by `kexec` (kernel, initramfs) and by systemd's
 * `soft-reboot` (userspace only), QEMU TCG (-smp 1, 1 GiB, OVMF), `ibu serve` on loopback.
 *
 * A device disk is prepared once per parallel worker: the device boots 2.0 (committed), its timers
 * prepare 4.0 while the operator's inhibitor holds the apply back, then it powers off. Each run
 * boots that disk under QEMU's `snapshot=on` (a throw-away qcow2 overlay: every run starts from the same bytes), waits for
 * multi-user.target, sets `reboot.method` in /etc/ibu/agent.json, lets go of the inhibitor and starts
 * upgradectl-apply.service (the timer's unit), then reads the serial log (QEMU wall clock) until
 * acme-agent 1.3 runs on 4.0; the overlay is thrown away. The methods take turns, so each sees
 * the same machine load; every run also times its own cold boot (QEMU start -> acme-agent 1.1
 * running on 2.0: the anchor, measured in the same run).
 *
 * Downtime = `acme-agent stopped` (after the agent's `rebooting (<method>)`) -> `acme-agent 1.3
 * running`. Its parts: shutdown (stopped -> the old kernel's last line: `reboot: Restarting
 * system` / `kexec_core: Starting new kernel`; for soft-reboot, stopped -> the new root's
 * systemd), firmware + GRUB (the reset -> the new kernel's `Linux version`: GRUB loads the kernel
 * and initrd through `loopback`; reboot only), kernel + initramfs (-> the new systemd's first line), and the new root's systemd up to the vendor service.
 *
 *   npm run bench:appliance-switch [-- --runs 5] [--parallel 2] [--methods reboot,kexec,soft-reboot] [--json FILE]
 * IBU_APPLIANCE_REUSE=DIR as in the tests; IBU_BENCH_KEEP=1 keeps the work dir (serial logs).
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FleetServer, ibu } from '../test/e2e/harness.js';
import { applianceReleases, deviceFiles, makeApplianceDisk, publishAppliance, type Appliance } from '../test/e2e/appliance.js';
import { RunningDevice, sshIdentity, type SshIdentity } from '../test/e2e/appliance-device.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}
const RUNS = Number(arg('runs', '5'));
const PARALLEL = Number(arg('parallel', '1'));
const METHODS = arg('methods', 'reboot,kexec,soft-reboot').split(',') as Method[];
const JSON_OUT = arg('json', '');
type Method = 'reboot' | 'kexec' | 'soft-reboot';

function median(xs: (number | null)[]): number | null {
  const s = xs.filter((x): x is number => x !== null).sort((a, b) => a - b);
  if (s.length === 0) return null;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export interface SwitchSample {
  method: Method;
  /** QEMU start -> acme-agent 1.1 running on 2.0 (the cold boot, this run's anchor). */
  coldBoot: number | null;
  /** QEMU start -> the kernel's first line (firmware + GRUB, which loads the kernel and initrd, of the cold boot). */
  coldFirmwareGrub: number | null;
  downtime: number | null;
  shutdown: number | null;
  firmwareGrub: number | null;
  kernelInitramfs: number | null;
  userspace: number | null;
  loadavg: number;
}

/** The phases of one switch from a stamped serial log (harness.ts boot()); null where a line is missing. */
export function switchPhases(log: string, method: Method): Omit<SwitchSample, 'loadavg'> {
  const lines = log.split('\n').flatMap((l) => {
    const m = /^\[\s*([\d.]+)\] (.*)$/.exec(l);
    return m ? [{ t: Number(m[1]), s: m[2]! }] : [];
  });
  const find = (re: RegExp, from: number): number => lines.findIndex((l, i) => i >= from && re.test(l.s));
  const at = (i: number): number | null => (i < 0 ? null : lines[i]!.t);
  const d = (a: number | null, b: number | null) => (a === null || b === null ? null : Math.round((b - a) * 10) / 10);
  const cold = find(/acme-agent 1\.1 running/, 0);
  const coldKernel = find(/\] Linux version /, 0);
  const sw = find(/rebooting \((reboot|kexec|soft-reboot)\)/, 0);
  const stop = sw < 0 ? -1 : find(/acme-agent stopped/, sw);
  const gone =
    stop < 0 ? -1 : find(method === 'reboot' ? /reboot: Restarting system/ : method === 'kexec' ? /kexec_core: Starting new kernel|Linux version/ : /$^/, stop);
  // the new kernel's first line: after the firmware and GRUB (which loads the kernel and initrd), or after kexec's hand-over
  const kernel = stop < 0 ? -1 : find(/\] Linux version /, stop);
  // the new root's systemd announces itself (after a kernel boot and after a soft-reboot alike)
  const init = stop < 0 ? -1 : find(/systemd\[1\]: systemd \d+.* running in system mode|Welcome to .*Debian/, stop);
  const up = stop < 0 ? -1 : find(/acme-agent 1\.3 running/, stop);
  return {
    method,
    coldBoot: at(cold),
    coldFirmwareGrub: at(coldKernel),
    downtime: d(at(stop), at(up)),
    shutdown: d(at(stop), method === 'soft-reboot' ? at(init) : at(gone)),
    firmwareGrub: method === 'reboot' ? d(at(gone), at(kernel)) : null,
    kernelInitramfs: method === 'soft-reboot' ? null : d(method === 'reboot' ? at(kernel) : at(gone), at(init)),
    userspace: d(at(init), at(up)),
  };
}

/** A device on 2.0 with 4.0 prepared and the apply held back, powered off: the disk every run starts from. */
async function prepareDisk(app: Appliance, server: FleetServer, work: string, keys: string, id: SshIdentity, name: string): Promise<string> {
  const token = await server.enroll(name);
  // held (/root/hold-upgrade): the bench lets go of the apply in each run
  const files = await deviceFiles({ name, token, keysDir: keys, sshPub: id.pub, hold: true, config: { reboot: { method: 'reboot' } } });
  const { disk } = await makeApplianceDisk(app, { work, name, first: '2.0', files });
  const dev = await RunningDevice.start({ disk, logFile: path.join(work, `${name}-prepare.log`), serverPort: server.port, id, timeoutMs: 3_600_000 });
  try {
    await dev.waitFor(/4\.0 is prepared/, { timeoutMs: 3_000_000 });
    // let the prepare unit finish writing before the power goes
    await dev.ssh('while systemctl is-active -q upgradectl-prepare.service; do sleep 1; done; sync');
  } finally {
    await dev.powerOff();
  }
  process.stderr.write(`${name}: disk prepared (2.0 committed, 4.0 prepared)\n`);
  return disk;
}

async function oneRun(base: string, method: Method, server: FleetServer, id: SshIdentity, work: string, tag: string): Promise<SwitchSample> {
  // snapshot=on: QEMU's own throw-away qcow2 overlay over the prepared disk
  const dev = await RunningDevice.start({
    disk: base,
    snapshot: true,
    logFile: path.join(work, `${tag}.log`),
    serverPort: server.port,
    id,
    timeoutMs: 2_400_000,
  });
  let load = 0;
  try {
    await dev.waitFor(/Reached target .*Multi-User System/, { timeoutMs: 1_200_000 });
    await dev.ssh(
      `sed -i 's/"method": "reboot"/"method": "${method}"/' /etc/ibu/agent.json && rm -f /root/hold-upgrade && ` +
        'systemctl start --no-block upgradectl-apply.service',
    );
    // the unit skips its run (exit 9) while a timer's agent command holds the lock: start it again
    const from = dev.mark();
    for (let i = 0; ; i++) {
      const started = await dev.waitFor(/rebooting \((reboot|kexec|soft-reboot)\)/, { from, timeoutMs: 90_000 }).catch(() => null);
      if (started) break;
      if (i >= 5) throw new Error(`${tag}: the apply did not start`);
      await dev.ssh('systemctl start --no-block upgradectl-apply.service');
    }
    load = os.loadavg()[0]!;
    await dev.waitFor(/acme-agent 1\.3 running/, { from, timeoutMs: 1_200_000 });
  } finally {
    await dev.kill();
  }
  const res = await fsp.readFile(path.join(work, `${tag}.log`), 'latin1');
  return { ...switchPhases(res, method), loadavg: Math.round(load * 10) / 10 };
}

async function main(): Promise<void> {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-bench-switch-'));
  const app = await applianceReleases();
  const keys = path.join(work, 'keys');
  const store = path.join(work, 'store');
  await ibu('keys', 'generate', '--out', keys);
  for (const v of ['2.0', '4.0'] as const) await publishAppliance(app, v, store, keys);
  const server = await new FleetServer(store, path.join(work, 'server.log')).start();
  const id = await sshIdentity(work);
  const load0 = os.loadavg();
  const samples: SwitchSample[] = [];
  try {
    const t0 = Date.now();
    const bases = await Promise.all(Array.from({ length: PARALLEL }, (_, k) => prepareDisk(app, server, work, keys, id, `bench-switch-${k + 1}`)));
    process.stderr.write(`disks prepared in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    const jobs = Array.from({ length: RUNS }, (_, i) => METHODS.map((m) => ({ i, m }))).flat();
    await Promise.all(
      bases.map(async (base, k) => {
        for (let job = jobs.shift(); job; job = jobs.shift()) {
          const s = await oneRun(base, job.m, server, id, work, `w${k + 1}-${job.m}-${job.i + 1}`);
          samples.push(s);
          process.stderr.write(`${job.m} run ${job.i + 1} (worker ${k + 1}): ${JSON.stringify(s)}\n`);
          // kept as it goes: a bench stopped early still has its runs
          if (JSON_OUT) await fsp.writeFile(`${JSON_OUT}.partial`, JSON.stringify(samples, null, 2));
        }
      }),
    );
  } finally {
    await server.stop();
  }
  const byMethod = Object.fromEntries(
    METHODS.map((m) => {
      const rs = samples.filter((s) => s.method === m);
      const keysOf = ['downtime', 'shutdown', 'firmwareGrub', 'kernelInitramfs', 'userspace', 'coldBoot', 'coldFirmwareGrub'] as const;
      return [m, { runs: rs.length, downtimes: rs.map((r) => r.downtime), median: Object.fromEntries(keysOf.map((k) => [k, median(rs.map((r) => r[k]))])) }];
    }),
  );
  const result = {
    pair: '2.0 -> 4.0 (acme-agent 1.1 -> 1.3, same kernel 6.12.118 and initrd)',
    machine: `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), QEMU TCG -smp 1 -m 1024, OVMF; ${PARALLEL} device(s) at a time`,
    loadavg: { start: load0.map((x) => x.toFixed(1)), end: os.loadavg().map((x) => x.toFixed(1)) },
    byMethod,
    coldBootMedian: median(samples.map((s) => s.coldBoot)),
    samples,
  };
  console.log(JSON.stringify(result, null, 2));
  if (JSON_OUT) await fsp.writeFile(JSON_OUT, JSON.stringify(result, null, 2));
  if (process.env.IBU_BENCH_KEEP === '1') process.stderr.write(`work dir kept: ${work}\n`);
  else await fsp.rm(work, { recursive: true, force: true });
}

/** `--reparse DIR`: the samples from the serial logs a kept work dir holds (a bench stopped early). */
async function reparse(dir: string): Promise<void> {
  const out: Omit<SwitchSample, 'loadavg'>[] = [];
  for (const f of (await fsp.readdir(dir)).filter((n) => /^w\d+-.*\.log$/.test(n)).sort()) {
    const m = /^w\d+-(reboot|kexec|soft-reboot)-\d+\.log$/.exec(f);
    if (m) out.push({ ...switchPhases(await fsp.readFile(path.join(dir, f), 'latin1'), m[1] as Method), file: f } as never);
  }
  console.log(JSON.stringify(out, null, 2));
}

(arg('reparse', '') ? reparse(arg('reparse', '')) : main()).catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
