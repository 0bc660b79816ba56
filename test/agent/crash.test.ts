/**
 * The crash harness: the real CLI in a child process is SIGKILLed (by itself at the N-th crash
 * point via IBU_AGENT_CRASH_AT, or by this test at a random moment of a download) and the device
 * must always (1) keep a grubenv that boots something: default_image and any try_image name a
 * complete, verified image; and (2) converge to the committed upgrade when the commands run again,
 * whether the agent was simply restarted or the power was cut (the test then "boots" as GRUB
 * would, see device.ts, and runs confirm as the boot unit does).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { cli, cliArgv, cloneDevice, makeDevice, type Device } from './device.js';
import { startServer, type TestServer } from './server.js';
import { run } from '../../src/util/exec.js';

const FROM = '1.0';
const TO = '2.0';
let template: Device;
/** The same device with 2.0 already prepared: the power-cut runs start from here. */
let prepared: Device;
let work: string;
let imageHashes: Map<string, string>;

before(async () => {
  template = await makeDevice({ running: FROM, releases: [{ version: FROM }, { version: TO, payloadBytes: 1024 * 1024 }] });
  const r = await cli(template, ['init', '--default', FROM]);
  assert.equal(r.code, 0, r.stderr);
  work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-crash-'));
  prepared = await cloneDevice(template, work, 'prepared-template');
  const p = await cli(prepared, ['prepare', '--version', TO]);
  assert.equal(p.code, 0, p.stderr);
  imageHashes = new Map();
  for (const v of [FROM, TO]) {
    const m = JSON.parse(await fsp.readFile(path.join(template.storeDir, 'releases', v, 'manifest.json'), 'utf8'));
    imageHashes.set(v, m.image.sha256);
  }
});

after(async () => {
  await template?.cleanup();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await fsp.readFile(file))
    .digest('hex');
}

/** The boot invariant: whatever GRUB picks next exists as a complete image (pristine 1.0, or a 2.0 that e2fsck accepts). */
async function assertBootable(dev: Device, where: string): Promise<void> {
  const env = await dev.env();
  assert.ok(env.default_image, `${where}: default_image is set`);
  for (const v of [env.default_image, env.try_image].filter((x): x is string => !!x)) {
    const img = path.join(dev.images, `${v}.img`);
    const st = await fsp.stat(img).catch(() => null);
    assert.ok(st, `${where}: ${v}.img named by grubenv exists`);
    if (v === FROM) assert.equal(await sha256(img), imageHashes.get(FROM), `${where}: ${v}.img is intact`);
    else {
      // The new image is modified by migration after verification; it must still be a clean ext4.
      const r = await run('e2fsck', ['-n', '-f', img], { allowFailure: true });
      assert.equal(r.code, 0, `${where}: ${v}.img passes e2fsck: ${r.stdout}`);
    }
  }
}

/** True when the upgrade is done: running and committed 2.0, nothing pending. */
async function committed(dev: Device): Promise<boolean> {
  const env = await dev.env();
  const cmd = await fsp.readFile(dev.cmdline, 'utf8');
  return env.default_image === TO && !env.try_image && cmd.includes(`/images/${TO}.img`);
}

type Stage = { args: string[] } | 'boot';
const FLOW: Stage[] = [{ args: ['prepare', '--version', TO] }, { args: ['apply', '--now'] }, 'boot', { args: ['confirm'] }];
const APPLY_FLOW: Stage[] = FLOW.slice(1);

/**
 * Runs the rest of the flow without faults, starting again at the stage that was killed (as a
 * restart or the boot unit would), then whole rounds from prepare if the device rolled back.
 */
async function converge(dev: Device, where: string, flow: Stage[], from: number, rerunKilled: boolean): Promise<void> {
  // Round 0 always re-runs the killed command (grubenv may already say committed while the
  // journal and the server do not know yet).
  for (let round = 0; round < 3 && ((round === 0 && rerunKilled) || !(await committed(dev))); round++) {
    const stages = round === 0 ? flow.slice(from) : FLOW;
    for (const st of stages) {
      if (st === 'boot') {
        await dev.boot();
        continue;
      }
      const r = await cli(dev, st.args);
      // 10: a trial that never confirmed was rolled back; 11: nothing to do in this state.
      assert.ok(r.code === 0 || r.code === 10 || r.code === 11, `${where}: ${st.args.join(' ')} exited ${r.code}: ${r.stderr}`);
      await assertBootable(dev, `${where} after ${st.args[0]}`);
    }
  }
  assert.ok(await committed(dev), `${where}: converged to ${TO}`);
  const j = JSON.parse(await fsp.readFile(path.join(dev.images, '.ibu', 'state.json'), 'utf8'));
  assert.equal(j.state, 'committed', `${where}: journal says committed`);
}

/**
 * Runs the flow with a crash at global crash point k (counted across the processes). Returns the
 * index of the stage that was killed, or -1 when k is past the last crash point (the flow ran clean).
 */
async function runWithCrashAt(dev: Device, k: number, powerCut: boolean, flow: Stage[]): Promise<number> {
  let remaining = k;
  for (const [i, st] of flow.entries()) {
    if (st === 'boot') {
      await dev.boot();
      continue;
    }
    const r = await cli(dev, st.args, { IBU_AGENT_CRASH_AT: String(remaining), IBU_AGENT_CRASH_TRACE: '1' });
    const passed = r.stderr.split('\n').filter((l) => l.startsWith('crash-point ')).length;
    if (r.signal === 'SIGKILL') {
      const where = `crash at point ${k} (${st.args[0]} #${remaining}: ${r.stderr
        .split('\n')
        .filter((l) => l.startsWith('crash-point '))
        .at(-1)})${powerCut ? ' + power cut' : ''}`;
      await assertBootable(dev, where);
      if (powerCut) {
        await dev.boot();
        await assertBootable(dev, `${where}, after the boot`);
        const c = await cli(dev, ['confirm']);
        assert.ok(c.code === 0 || c.code === 10, `${where}: confirm at boot exited ${c.code}: ${c.stderr}`);
        // After a power cut the operator's (or timer's) commands run again from the start.
        await converge(dev, where, FLOW, 0, false);
      } else {
        await converge(dev, where, flow, i, true);
      }
      return i;
    }
    assert.equal(r.code, 0, `${st.args.join(' ')} (no crash reached) failed: ${r.stderr}`);
    remaining -= passed;
  }
  assert.ok(await committed(dev), 'the fault-free flow commits');
  return -1;
}

test('SIGKILL at every step boundary, then restart: always bootable, always converges', async (t) => {
  // The boundaries of prepare from the fresh device; once k reaches apply, those of apply and
  // confirm from the prepared copy (the same states, without re-running prepare every time).
  let points = 0;
  for (const [flow, from, name] of [
    [FLOW, template, 'restart'],
    [APPLY_FLOW, prepared, 'restart-apply'],
  ] as const) {
    for (let k = 1; k < 200; k++) {
      const dev = await cloneDevice(from, work, `${name}-${k}`);
      try {
        const killed = await runWithCrashAt(dev, k, false, flow);
        if (killed < 0) break;
        if (flow === FLOW && killed > 0) break; // reached apply: the second loop covers it
        points++;
      } finally {
        await dev.cleanup();
      }
    }
  }
  t.diagnostic(`killed at each of ${points} crash points`);
  assert.ok(points > 25, `the flow passed ${points} crash points`);
});

// Prepare never touches the boot state, so a power cut there is the restart case above; here the
// cut comes at every boundary of apply and confirm, where grubenv changes.
test('SIGKILL at every boundary of apply and confirm, then power cut and boot: always bootable, always converges', async (t) => {
  let k = 1;
  for (; k < 200; k++) {
    const dev = await cloneDevice(prepared, work, `power-${k}`);
    try {
      if ((await runWithCrashAt(dev, k, true, APPLY_FLOW)) < 0) break;
    } finally {
      await dev.cleanup();
    }
  }
  t.diagnostic(`killed at each of ${k - 1} crash points`);
  assert.ok(k > 10, `the flow passed ${k - 1} crash points`);
});

test('SIGKILL at random moments of a download from the real ibu serve: no image appears unverified, the download resumes', async (t) => {
  const server: TestServer = await startServer(template.storeDir, { chunkDelayMs: 3 });
  const dev = await cloneDevice(template, work, 'random');
  try {
    await dev.writeConfig({ download: { store: `${server.url}/v1` } });
    const staged = path.join(dev.images, '.ibu', 'staging');
    // Deterministic pseudo-random kill delays (xorshift), so a failure reproduces.
    let x = 0x2545f491;
    const rnd = (): number => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x / 0x100000000;
    };
    let kills = 0;
    const RUNS = 100;
    for (let i = 0; i < RUNS; i++) {
      if (await fsp.stat(path.join(dev.images, `${TO}.img`)).catch(() => null)) {
        // Finished: start the download over on a fresh copy so every run kills a download.
        await fsp.rm(path.join(dev.images, `${TO}.img`));
        await fsp.rm(path.join(dev.images, '.ibu'), { recursive: true, force: true });
      }
      const child = spawn(process.execPath, [...cliArgv(), 'prepare', '--version', TO, '--config', dev.configPath], { stdio: 'ignore' });
      const exited = new Promise<NodeJS.Signals | null>((r) => child.on('close', (_c, s) => r(s)));
      // Wait until the download has started, then kill at a random moment within ~0.3 s.
      for (let w = 0; w < 400; w++) {
        if (
          await fsp.readdir(staged).then(
            (l) => l.some((n) => n.endsWith('.partial')),
            () => false,
          )
        )
          break;
        if (child.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => setTimeout(r, rnd() * 300));
      child.kill('SIGKILL');
      if ((await exited) === 'SIGKILL') kills++;
      await assertBootable(dev, `random kill ${i}`);
      const img = path.join(dev.images, `${TO}.img`);
      if (await fsp.stat(img).catch(() => null)) assert.equal(await sha256(img), imageHashes.get(TO), `run ${i}: an installed ${TO}.img is the verified image`);
    }
    t.diagnostic(`${kills} of ${RUNS} runs killed mid-way`);
    assert.ok(kills >= RUNS / 2, `most runs were killed mid-way (${kills} of ${RUNS})`);
    const before = server.chunkRequests;
    const r = await cli(dev, ['prepare', '--version', TO, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.outcome, 'prepared');
    assert.equal(await sha256(path.join(dev.images, `${TO}.img`)), imageHashes.get(TO));
    assert.ok(server.chunkRequests >= before);
  } finally {
    await server.close();
    await dev.cleanup();
  }
});
