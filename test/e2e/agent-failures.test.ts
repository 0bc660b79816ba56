/**
 * The failure half of the end-to-end story (issue 7 d, e, f), with the same real parts as
 * agent-upgrade.test.ts: images built by `ibu image build`, published with `ibu release publish`,
 * served by `ibu serve` on 127.0.0.1, QEMU devices that reach it only through restricted user
 * networking, the real agent (upgradectl) inside the images.
 *
 * (d, e1) One device, three QEMU runs, two power cuts. Its host fs holds an old image 0.9 and a
 *   filler so that 2.0 fits only once the disk policy deletes 0.9. Run 1: prepare; QEMU is
 *   SIGKILLed the moment the agent enters its download step (the agent's crash-point trace on the
 *   serial line, IBU_AGENT_CRASH_TRACE). Run 2: 1.0 boots; prepare resumes and finishes, apply
 *   writes the try flag; QEMU is killed the moment the agent is about to reboot. Run 3: GRUB boots
 *   the trial, confirm commits. Between runs the disk is read as GRUB sees it and, on a copy with
 *   the ext4 journal replayed, as the next kernel will.
 * (e2, f) One device, one QEMU run with a reboot: the host fs is so full that nothing may be
 *   deleted, prepare fails with NO_SPACE and leaves nothing behind; then the script frees the
 *   space and prepares from a second server whose cached delta and whose 2.0-only chunks were
 *   tampered with after publishing: the delta is refused, the chunks are refused (CHUNK_INVALID),
 *   the device reboots into 1.0 with its grubenv as built (but for GRUB's boot counter).
 * Sizes are computed from the manifests and the built host fs, never guessed; no timing is asserted.
 */
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { compress, decompress } from 'zstd-napi';
import { bytesToAllocate } from '../../src/agent/disk-policy.js';
import { EXIT } from '../../src/cli/exit-codes.js';
import { parseManifestUnverified } from '../../src/release/manifest.js';
import type { Manifest } from '../../src/release/types.js';
import { chunkPath, manifestPath } from '../../src/store/layout.js';
import {
  e2eUnavailable,
  boot,
  missingInOrder,
  guestNetArgs,
  repoRoot,
  timeline,
  FleetServer,
  makeFleetDevice,
  type HostFs,
  type BootResult,
} from './harness.js';
import { useFleetServer } from './fleet-fixture.js';

/**
 * What the agent owns in both env copies: every variable but GRUB's boot counting (ibu_attempt,
 * ibu_tally), which GRUB writes at every boot. ibu_seq only moves when the agent writes.
 */
async function agentEnv(host: HostFs): Promise<string[]> {
  return (await host.envBlocks()).map((b) =>
    b
      .toString('latin1')
      .split('\n')
      .filter((l) => l.includes('=') && !/^ibu_(attempt|tally)=/.test(l))
      .join('\n'),
  );
}

const unavailable = e2eUnavailable() ?? (existsSync(path.join(repoRoot(), 'dist/src/cli/ibu.js')) ? null : 'dist/ is not built (npm run build)');
/** The agent's default space.reserveBytes (src/agent/config.ts); the device configs do not change it. */
const RESERVE = 64 * 1024 * 1024;
const MiB = 1048576;

describe('agent on a QEMU device: power cuts, a full disk, tampered downloads', { skip: unavailable ?? false }, () => {
  const fleet = useFleetServer('ibu-e2e-fail-');
  let m1: Manifest;
  let m2: Manifest;

  before(async () => {
    m1 = parseManifestUnverified(await fsp.readFile(path.join(fleet.build.store, manifestPath('1.0'))));
    m2 = parseManifestUnverified(await fsp.readFile(path.join(fleet.build.store, manifestPath('2.0'))));
  });

  async function runDevice(name: string, disk: string, extra: string[], killOn?: RegExp): Promise<BootResult> {
    const res = await boot({ disk, logFile: path.join(fleet.work, `${name}.log`), memMiB: 1024, extra, timeoutMs: 1_200_000, killOn });
    console.log(`${name}: ${timeline(res.log)}${res.killedOn ? ` | power cut on: ${res.killedOn}` : ''}`);
    return res;
  }

  function expectLog(name: string, res: BootResult, patterns: RegExp[]): void {
    const tail = res.log.split('\n').slice(-80).join('\n');
    assert.equal(res.timedOut || res.stuck !== null, false, `${name}: the device did not finish\n${tail}`);
    const miss = missingInOrder(res.log, patterns);
    assert.equal(miss, null, `${name}: ${miss}\n--- serial log tail (${res.logFile}):\n${tail}`);
  }

  /** Bytes the image file allocates on the host fs (debugfs Blockcount, 512-byte units). */
  async function allocatedOn(host: HostFs, file: string): Promise<number> {
    const n = Number(/Blockcount:\s+(\d+)/.exec(await host.debugfs(`stat ${file}`))?.[1]);
    assert.ok(n > 0, `${file} has no blocks on the host fs`);
    return n * 512;
  }

  async function journalOf(
    host: HostFs,
  ): Promise<{ state: string; step: string | null; target: { version: string } | null; lastError: { code: string } | null }> {
    const raw = await host.readFile('/images/.ibu/state.json');
    assert.ok(raw, 'the agent journal /images/.ibu/state.json exists');
    return JSON.parse(raw.toString('utf8'));
  }

  async function sha256Of(host: HostFs, file: string): Promise<string | null> {
    const buf = await host.readFile(file);
    return buf ? createHash('sha256').update(buf).digest('hex') : null;
  }

  // Same script on every boot: 1.0 prepares and applies (a rerun resumes from the journal),
  // a trial confirms. The trace prints each crash point the agent passes: where the power is cut.
  const CUT_RUN = `
export IBU_AGENT_CRASH_TRACE=1
if [ "$IBU_E2E_VERSION" = 1.0 ]; then
  $C prepare; echo "IBU-E2E prepare exit $?"
  $C apply --now; echo "IBU-E2E apply exit $? (it should have rebooted)"
  sleep 600
fi
$C confirm; echo "IBU-E2E confirm exit $?"
$C status --json | sed 's/^/IBU-E2E status /'
find /host/images | sed 's/^/IBU-E2E file /'
`;
  const HEALTHY = [{ name: 'userland', command: ['test', '-f', '/etc/ibu-e2e/version'], timeoutSeconds: 10 }];

  test('(d, e1) power cut as the download starts and right after the try flag is written: 1.0, then the 2.0 trial boot, commit; 0.9 deleted by the disk policy to make room', async () => {
    const name = 'vm-d';
    const { disk, host } = await makeFleetDevice(fleet.build, fleet.server, {
      name,
      runSh: CUT_RUN,
      health: HEALTHY,
      extraImages: { '0.9': fleet.build.img1 },
    });
    // e1 sizing: without 0.9 the download must not fit (free < needed + reserve), with 0.9 gone it
    // must, with half of 0.9's blocks as the margin on either side.
    const needed = bytesToAllocate(m2.chunks, 4096);
    const old = await allocatedOn(host, '/images/0.9.img');
    const required = needed + RESERVE;
    const target = required - Math.floor(old / 2);
    const { avail } = await host.availBytes();
    assert.ok(avail > target + MiB, `the host fs is too small for this scenario (${avail} bytes free, ${target} wanted)`);
    await host.fallocate('/ibu-e2e/filler', avail - target);
    const left = (await host.availBytes()).avail;
    assert.ok(left < required && left + old >= required, `filler sizing: ${left} free, ${required} required, 0.9 frees ${old}`);
    const envBuilt = await agentEnv(host);

    // run 1: power cut as the agent enters its download step (the disk policy ran just before)
    const r1 = await runDevice(`${name}-1`, disk, guestNetArgs(fleet.server.port), /crash-point \d+ step download/);
    assert.ok(r1.killedOn, `${name}-1: the agent never reached its download step\n${r1.log.split('\n').slice(-60).join('\n')}`);
    expectLog(`${name}-1`, r1, [
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /disk policy removed 0\.9\.img/,
      /crash-point \d+ step download/,
    ]);
    assert.doesNotMatch(r1.log, /IBU-E2E prepare exit/, 'the cut landed inside prepare');
    // what GRUB reads (no journal replay): the env as built, no 2.0 image to pick
    assert.deepEqual(await agentEnv(host), envBuilt, 'grubenv untouched by the cut prepare (GRUB counts its boots, the agent wrote nothing)');
    assert.equal(await host.readFile('/images/2.0.img'), null, 'no /images/2.0.img after a cut during download');
    {
      // what the next kernel sees (journal replayed on a copy): the policy's deletion and the journal
      const rec = await host.recoveredCopy();
      assert.equal(await rec.readFile('/images/2.0.img'), null);
      assert.equal(await rec.readFile('/images/0.9.img'), null, '0.9 deleted by the disk policy, durably');
      assert.ok(await rec.readFile('/images/.ibu/manifests/2.0.json'), 'the verified manifest is cached');
      const j = await journalOf(rec);
      // the cut lands as the download starts; on a fast guest the (4 KiB) download may finish before QEMU dies
      assert.deepEqual([j.state, j.target?.version], ['preparing', '2.0'], 'the journal still prepares 2.0');
      assert.ok(j.step === 'reserve-space' || j.step === 'download', `journal step ${j.step}: the last completed step before or at the cut`);
      await fsp.rm(rec.disk, { force: true });
    }

    // run 2: prepare resumes and completes; apply; power cut right after the try flag is recorded
    const r2 = await runDevice(`${name}-2`, disk, guestNetArgs(fleet.server.port), /crash-point \d+ step reboot/);
    assert.ok(r2.killedOn, `${name}-2: the agent never got to its reboot step\n${r2.log.split('\n').slice(-60).join('\n')}`);
    expectLog(`${name}-2`, r2, [
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /crash-point \d+ step download/,
      /crash-point \d+ step install/,
      /IBU-E2E prepare exit 0/,
      /crash-point \d+ step set-try/,
      /crash-point \d+ step reboot/,
    ]);
    // The agent goes on for a few ms after printing the point (recording step 'reboot') before the
    // kill lands; what matters is that it never got to reboot the guest.
    assert.doesNotMatch(r2.log, /IBU-E2E apply exit|ibu: default_image=1\.0 try=2\.0/, 'the cut landed before the agent rebooted');
    // as GRUB reads the disk right now: a trial of 2.0 pending, and the 2.0 file whole
    const st2 = await host.bootState();
    assert.deepEqual([st2.defaultImage, st2.tryImage], ['1.0', '2.0'], 'the try flag reached the disk before the cut');
    assert.equal(await sha256Of(host, '/images/2.0.img'), m2.image.sha256, '/images/2.0.img as GRUB sees it is the whole signed image');
    assert.equal(await sha256Of(host, '/images/1.0.img'), m1.image.sha256, '1.0 intact');
    {
      const rec = await host.recoveredCopy();
      const j = await journalOf(rec);
      assert.equal(j.state, 'applying', 'the journal after the cut in apply');
      assert.ok(j.step === 'set-try' || j.step === 'reboot', `journal step ${j.step}: the try flag recorded`);
      assert.equal(j.target?.version, '2.0');
      await fsp.rm(rec.disk, { force: true });
    }

    // run 3: GRUB boots the trial; confirm commits and reports
    const r3 = await runDevice(`${name}-3`, disk, guestNetArgs(fleet.server.port));
    expectLog(`${name}-3`, r3, [
      /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
      /IBU-E2E RUNNING version=2\.0 trial=1/,
      /IBU-E2E confirm exit 0/,
      /IBU-E2E status .*"running":"2\.0","committed":"2\.0"/,
      /IBU-E2E POWEROFF version=2\.0/,
    ]);
    assert.doesNotMatch(r3.log, /IBU-E2E RUNNING version=1\.0/, 'no detour through 1.0');
    const st3 = await host.bootState();
    assert.deepEqual([st3.defaultImage, st3.tryImage], ['2.0', null], 'committed on the disk');
    assert.equal((await host.fsck()).code, 0, 'host fs clean after the final power-off');
    assert.equal(await host.readFile('/images/0.9.img'), null, '0.9 stays deleted');
    assert.equal(await sha256Of(host, '/images/1.0.img'), m1.image.sha256, '1.0 kept for rollbacks');
    assert.equal(await sha256Of(host, '/images/2.0.img'), m2.image.sha256);
    const j = await journalOf(host);
    assert.deepEqual([j.state, j.target?.version, j.lastError], ['committed', '2.0', null]);
    assert.deepEqual(await fleet.server.deviceRecord(name), { version: '2.0', committedVersion: '2.0', state: 'committed', trial: false, lastErrorCode: null });
    assert.deepEqual(fleet.server.events(name), [
      { type: 'apply-started', from: '1.0', to: '2.0', errorCode: null },
      { type: 'upgrade-succeeded', from: '1.0', to: '2.0', errorCode: null },
    ]);
    const served = await fleet.server.statusesFor('/v1/deltas/1.0/2.0');
    assert.ok(
      served.some((s) => s === 200 || s === 206),
      `the delta was served (statuses ${served.join(',')})`,
    );
  });

  /**
   * A copy of the store served by a second server, its cached 1.0→2.0 delta and every chunk
   * only 2.0 has tampered with after publishing (a compromised mirror or bit rot).
   */
  async function tamperedServer(): Promise<{ server: FleetServer; deltaFlipAt: number; chunks: string[] }> {
    const data = path.join(fleet.work, 'store-tampered');
    await fsp.mkdir(data);
    for (const entry of await fsp.readdir(fleet.build.store)) {
      // the release side only: the running server's cache and databases stay its own
      if (entry === 'cache' || entry.includes('.sqlite')) continue;
      await fsp.cp(path.join(fleet.build.store, entry), path.join(data, entry), { recursive: true });
    }
    // Plain deltas only: what the device downloads is the delta tampered with below, whatever encoders it names.
    const s = await new FleetServer(data, path.join(fleet.work, 'server-tampered.log'), ['--no-delta-recompress']).start();
    // the delta as the server builds and caches it
    let delta: Buffer | null = null;
    for (let i = 0; i < 600 && !delta; i++) {
      const r = await fetch(`${s.base}/v1/deltas/1.0/2.0`);
      if (r.status === 200) delta = Buffer.from(await r.arrayBuffer());
      else if (r.status === 202) await new Promise((res) => setTimeout(res, 1000));
      else throw new Error(`GET /v1/deltas/1.0/2.0 on the tampered server: HTTP ${r.status} ${await r.text()}`);
    }
    assert.ok(delta, 'the second server built the delta');
    const file = path.join(data, 'cache/deltas/1.0_2.0.ibudelta');
    const bytes = await fsp.readFile(file);
    assert.ok(bytes.equals(delta), 'the served delta is the cached file');
    const deltaFlipAt = Math.floor(bytes.length / 2);
    bytes[deltaFlipAt] ^= 0xff;
    await fsp.writeFile(file, bytes);
    const again = Buffer.from(await (await fetch(`${s.base}/v1/deltas/1.0/2.0`)).arrayBuffer());
    assert.ok(again.equals(bytes), 'the server serves the tampered delta as is');
    // chunks: the plain bytes changed in the middle and compressed again (a valid zstd frame whose
    // content no longer matches its id)
    const in1 = new Set(m1.chunks.map((c) => c.id));
    const only2 = [...new Set(m2.chunks.filter((c) => !c.zero && !in1.has(c.id)).map((c) => c.id))];
    assert.ok(only2.length > 0, '2.0 has chunks 1.0 does not');
    for (const id of only2) {
      const p = path.join(data, chunkPath(id));
      const plain = Buffer.from(decompress(await fsp.readFile(p)));
      plain[Math.floor(plain.length / 2)] ^= 0xff;
      await fsp.writeFile(p, compress(plain));
    }
    return { server: s, deltaFlipAt, chunks: only2 };
  }

  test('(e2, f) host fs too full: NO_SPACE, nothing broken; then a tampered delta and tampered chunks are refused; the device stays on 1.0', async () => {
    const name = 'vm-ef';
    const t = await tamperedServer();
    fleet.alsoStop(t.server);
    const tokenF = await t.server.enroll(name);
    const runSh = `
F="node /opt/ibu/bin/upgradectl --config /host/ibu-e2e/agent-f.json"
if [ ! -e /host/ibu-e2e/phases-done ]; then
  echo "IBU-E2E phase e2: host fs nearly full"
  $C prepare; echo "IBU-E2E prepare exit $?"
  find /host/images | sed 's/^/IBU-E2E file /'
  $C status --json | sed 's/^/IBU-E2E status /'
  rm /host/ibu-e2e/filler; sync
  echo "IBU-E2E phase f: space freed; preparing from the tampered server"
  $F prepare; echo "IBU-E2E tampered prepare exit $?"
  find /host/images | sed 's/^/IBU-E2E file /'
  $F status --json | sed 's/^/IBU-E2E status /'
  touch /host/ibu-e2e/phases-done; sync
  echo "IBU-E2E rebooting"; reboot -f; sleep 600
fi
$C status --json | sed 's/^/IBU-E2E status /'
`;
    const { disk, host } = await makeFleetDevice(fleet.build, fleet.server, {
      name,
      runSh,
      health: HEALTHY,
      extraConfigs: { 'agent-f.json': { url: 'http://10.0.2.101', token: tokenF } },
    });
    // e2 sizing: half the reserve left free; 1.0 is the only image and may not be deleted
    const required = bytesToAllocate(m2.chunks, 4096) + RESERVE;
    const { avail } = await host.availBytes();
    await host.fallocate('/ibu-e2e/filler', avail - RESERVE / 2);
    const left = (await host.availBytes()).avail;
    assert.ok(left < required, `filler sizing: ${left} free, ${required} required`);
    const envBuilt = await agentEnv(host);

    const r = await runDevice(name, disk, guestNetArgs(fleet.server.port, { '10.0.2.101': t.server.port }));
    expectLog(name, r, [
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E phase e2/,
      /error\[NO_SPACE\]: Not enough space in \/host\/images for 2\.0/,
      new RegExp(`IBU-E2E prepare exit ${EXIT.NO_SPACE}$`),
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0".*"lastError":\{"code":"NO_SPACE"/,
      /IBU-E2E phase f/,
      /the delta route failed \(The delta .* is corrupt .*\); fetching chunks instead/,
      /error\[CHUNK_INVALID\]/,
      new RegExp(`IBU-E2E tampered prepare exit ${EXIT.VERIFY_FAILED}$`),
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0".*"lastError":\{"code":"CHUNK_INVALID"/,
      /IBU-E2E rebooting/,
      /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
      /IBU-E2E RUNNING version=1\.0 trial=0/,
      /IBU-E2E status .*"running":"1\.0","committed":"1\.0"/,
      /IBU-E2E POWEROFF version=1\.0/,
    ]);
    assert.doesNotMatch(r.log, /version=2\.0|try=2\.0/, '2.0 never booted, never named for a trial');
    // e2: after NO_SPACE nothing of 2.0 on the host fs (the listing printed between the phases)
    const e2Files = r.log
      .slice(r.log.indexOf('IBU-E2E phase e2'), r.log.indexOf('IBU-E2E phase f'))
      .split('\n')
      .filter((l) => /IBU-E2E file /.test(l));
    assert.ok(
      e2Files.some((l) => /\/host\/images\/1\.0\.img$/.test(l)),
      'the listing ran',
    );
    // (the verified manifest it fetched is cached; no image bytes, partial or staged, were written)
    assert.deepEqual(
      e2Files.filter((l) => /2\.0\.img|staging|ibudelta/.test(l)),
      [],
      'no partial or staged 2.0 file after NO_SPACE',
    );
    // f: no 2.0 image in /images (a refused download never gets there)
    const fFiles = r.log
      .slice(r.log.indexOf('IBU-E2E phase f'), r.log.indexOf('IBU-E2E rebooting'))
      .split('\n')
      .filter((l) => /IBU-E2E file \/host\/images\/2\.0\.img$/.test(l));
    assert.deepEqual(fFiles, [], 'no /images/2.0.img after the refused download');
    assert.deepEqual(await agentEnv(host), envBuilt, 'grubenv as built (GRUB counts its boots, the agent wrote nothing)');
    assert.equal(await host.readFile('/images/2.0.img'), null);
    assert.equal(await sha256Of(host, '/images/1.0.img'), m1.image.sha256);
    assert.equal((await host.fsck()).code, 0, 'host fs clean');
    const j = await journalOf(host);
    assert.deepEqual([j.target?.version, j.lastError?.code], ['2.0', 'CHUNK_INVALID'], 'the journal names the refused target and why');
    // the servers' records: NO_SPACE on the first, CHUNK_INVALID on the tampered one
    assert.deepEqual(fleet.server.events(name), [{ type: 'prepare-failed', from: '1.0', to: '2.0', errorCode: 'NO_SPACE' }]);
    assert.deepEqual(t.server.events(name), [{ type: 'prepare-failed', from: '1.0', to: '2.0', errorCode: 'CHUNK_INVALID' }]);
    const rec = await fleet.server.deviceRecord(name);
    assert.deepEqual([rec.version, rec.committedVersion, rec.lastErrorCode], ['1.0', '1.0', 'NO_SPACE']);
    // (the target was resolved with the first server, so the agent did not check in with the second: it knows the failure only)
    assert.equal((await t.server.deviceRecord(name)).lastErrorCode, 'CHUNK_INVALID');
  });
});
