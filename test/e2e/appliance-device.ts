/**
 * One appliance device in QEMU, driven as an operator would: its serial console is read line by
 * line while it runs (waitFor), and the test logs in over SSH (QEMU user networking, restrict=on,
 * one host port forwarded to the guest's sshd) with a key the device was provisioned with. The
 * guest reaches `ibu serve` only as http://10.0.2.100 (guestfwd), as in harness.ts.
 * No top-level side effects.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { boot, freePort, type BootResult } from './harness.js';

const execFileP = promisify(execFile);

export interface SshIdentity {
  key: string;
  pub: string;
  knownHosts: string;
}

/** An ed25519 key for the test's logins, and an empty known_hosts the first login fills. */
export async function sshIdentity(dir: string): Promise<SshIdentity> {
  const key = path.join(dir, 'id_e2e');
  await execFileP('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ibu-e2e', '-f', key]);
  const knownHosts = path.join(dir, 'known_hosts');
  await fsp.writeFile(knownHosts, '');
  return { key, pub: await fsp.readFile(`${key}.pub`, 'utf8'), knownHosts };
}

interface Waiter {
  re: RegExp;
  from: number;
  resolve: (line: string) => void;
}

/** A running QEMU device: its serial lines so far, waits on them, SSH into it. */
export class RunningDevice {
  readonly lines: string[] = [];
  private waiters: Waiter[] = [];
  readonly done: Promise<BootResult>;
  private exited = false;
  private readonly abort = new AbortController();

  private constructor(
    readonly sshPort: number,
    private readonly id: SshIdentity,
    o: {
      disk: string;
      snapshot?: boolean;
      logFile: string;
      serverPort: number;
      timeoutMs: number;
      killOn?: RegExp;
      onLine?: (line: string) => void;
      firmware?: 'uefi' | 'bios';
      stuckOn?: RegExp[];
      powerCycleOnGrubHangMs?: number;
      powerCycle?: boolean;
    },
  ) {
    this.done = boot({
      disk: o.disk,
      snapshot: o.snapshot,
      logFile: o.logFile,
      memMiB: 1024,
      timeoutMs: o.timeoutMs,
      extra: [
        '-device',
        'virtio-net-pci,netdev=n0',
        '-netdev',
        `user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:${sshPort}-:22,guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 ${o.serverPort}`,
      ],
      killOn: o.killOn,
      firmware: o.firmware,
      stuckOn: o.stuckOn,
      powerCycleOnGrubHangMs: o.powerCycleOnGrubHangMs,
      powerCycle: o.powerCycle,
      onLine: (l) => {
        this.onLine(l);
        o.onLine?.(l);
      },
      signal: this.abort.signal,
    });
    void this.done.then(() => {
      this.exited = true;
      for (const w of this.waiters) w.resolve('');
      this.waiters = [];
    });
  }

  static async start(o: {
    disk: string;
    snapshot?: boolean;
    logFile: string;
    serverPort: number;
    id: SshIdentity;
    timeoutMs?: number;
    killOn?: RegExp;
    onLine?: (line: string) => void;
    /** Default uefi (OVMF). */
    firmware?: 'uefi' | 'bios';
    /** Lines that mean the boot is stuck (default: boot()'s, which include GRUB's menu). */
    stuckOn?: RegExp[];
    /** Power-cycle a GRUB that prints nothing this long after its welcome (boot()'s powerCycleOnGrubHangMs). */
    powerCycleOnGrubHangMs?: number;
    /** Every guest reset restarts QEMU on the same disk (boot()'s powerCycle). */
    powerCycle?: boolean;
  }): Promise<RunningDevice> {
    return new RunningDevice(await freePort(), o.id, { ...o, timeoutMs: o.timeoutMs ?? 1_800_000 });
  }

  private onLine(l: string): void {
    this.lines.push(l);
    const i = this.lines.length - 1;
    this.waiters = this.waiters.filter((w) => {
      if (i >= w.from && w.re.test(l)) {
        w.resolve(l);
        return false;
      }
      return true;
    });
  }

  /** Index of the next serial line: pass it to waitFor to wait only for lines after now. */
  mark(): number {
    return this.lines.length;
  }

  /** Resolves with the first line matching re at or after `from`; rejects when the guest is gone or after timeoutMs. */
  async waitFor(re: RegExp, o: { from?: number; timeoutMs?: number } = {}): Promise<string> {
    const from = o.from ?? 0;
    const seen = this.lines.slice(from).find((l) => re.test(l));
    if (seen !== undefined) return seen;
    if (this.exited) throw new Error(`the device stopped before a line matching ${re}`);
    let timer: NodeJS.Timeout | undefined;
    const line = await Promise.race([
      new Promise<string>((resolve) => this.waiters.push({ re, from, resolve })),
      new Promise<string>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no serial line matching ${re} within ${(o.timeoutMs ?? 900_000) / 1000} s`)), o.timeoutMs ?? 900_000);
      }),
    ]).finally(() => clearTimeout(timer));
    if (line === '' && this.exited) throw new Error(`the device stopped before a line matching ${re}`);
    return line;
  }

  /**
   * Runs a shell command on the device as root over SSH. The host key is pinned: the first
   * login records it, every later one must see the same key (an upgrade that lost the device's
   * SSH host keys fails here). Retries while sshd is not up yet.
   */
  async ssh(cmd: string, o: { retries?: number } = {}): Promise<string> {
    const args = [
      '-i',
      this.id.key,
      '-p',
      String(this.sshPort),
      '-o',
      `UserKnownHostsFile=${this.id.knownHosts}`,
      '-o',
      'StrictHostKeyChecking=accept-new',
      '-o',
      'BatchMode=yes',
      '-o',
      'ConnectTimeout=60',
      '-o',
      'LogLevel=ERROR',
      'root@127.0.0.1',
      cmd,
    ];
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await execFileP('ssh', args, { timeout: 300_000, maxBuffer: 16 << 20 });
        return r.stdout;
      } catch (err) {
        const e = err as { code?: number; stderr?: string };
        // 255: ssh itself failed (no connection yet); a host key change is never retried
        if (e.code !== 255 || /HOST IDENTIFICATION HAS CHANGED|Host key verification failed/.test(e.stderr ?? '') || attempt >= (o.retries ?? 20)) {
          throw new Error(`ssh ${cmd}: exit ${e.code}: ${e.stderr ?? ''}`);
        }
        await new Promise((r) => setTimeout(r, 5000));
      }
    }
  }

  /** Cuts the power (SIGKILL QEMU) and waits for it to exit: for a test that gives up. */
  async kill(): Promise<BootResult> {
    this.abort.abort();
    return this.done;
  }

  /** Asks the device to power off and waits for QEMU to exit. */
  async powerOff(): Promise<BootResult> {
    await this.ssh('systemctl poweroff', { retries: 3 }).catch(() => '');
    return this.done;
  }
}

/**
 * A TCP relay between the guest's http://10.0.2.100 and `ibu serve` that reads each request line
 * and counts the bytes of the answer: a test can cut the power in the middle of a real transfer.
 * Once `cutWhen` has fired, that connection's answer is held (no more bytes reach the guest), so
 * the transfer is surely unfinished when QEMU is killed.
 */
export class ServerTap {
  private readonly server: net.Server;
  private readonly open = new Set<net.Socket>();
  private held: RegExp | null = null;
  private waiter: { request: RegExp; bytes: number; resolve: (hit: { request: string; bytes: number }) => void } | null = null;

  private constructor(private readonly target: number) {
    this.server = net.createServer((guest) => this.relay(guest));
  }

  static async start(target: number): Promise<ServerTap> {
    const tap = new ServerTap(target);
    await new Promise<void>((resolve) => tap.server.listen(0, '127.0.0.1', resolve));
    return tap;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /**
   * Resolves once an answer to a request matching `request` has carried `bytes`. That answer stops
   * there, and so does every later answer to such a request (a retry must not finish the transfer
   * before the power is cut) until `release()`.
   */
  cutWhen(request: RegExp, bytes: number): Promise<{ request: string; bytes: number }> {
    return new Promise((resolve) => (this.waiter = { request, bytes, resolve }));
  }

  /** Lets answers through again (the device is about to boot anew). */
  release(): void {
    this.held = null;
  }

  private relay(guest: net.Socket): void {
    const up = net.connect(this.target, '127.0.0.1');
    let request = '';
    let sent = 0;
    guest.on('data', (d: Buffer) => {
      // keep-alive: every request on the connection starts a new answer
      const line = /^(GET|HEAD|POST|PUT|DELETE) (\S+)/.exec(d.subarray(0, 512).toString('latin1'));
      if (line) {
        request = `${line[1]} ${line[2]}`;
        sent = 0;
      }
      if (!up.write(d)) guest.pause();
    });
    up.on('drain', () => guest.resume());
    guest.on('drain', () => up.resume());
    up.on('data', (d: Buffer) => {
      if (this.held?.test(request)) return;
      sent += d.length;
      const w = this.waiter;
      if (w && w.request.test(request) && sent >= w.bytes) {
        this.held = w.request;
        this.waiter = null;
        w.resolve({ request, bytes: sent });
        return;
      }
      if (!guest.write(d)) up.pause();
    });
    this.open.add(guest).add(up);
    const end = () => {
      this.open.delete(guest);
      this.open.delete(up);
      guest.destroy();
      up.destroy();
    };
    guest.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
  }

  async close(): Promise<void> {
    for (const s of this.open) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
