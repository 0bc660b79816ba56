/**
 * src/agent/boot-health.ts: the plan (pure, table below) and the agent doing it at `upgradectl
 * confirm` against the real `ibu serve`: a damaged env copy is repaired and reported, a lost env
 * is rebuilt with the committed image (never silently with the fallback that booted), and a boot
 * on another image than the committed one is reported once and flags the device on the server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { planBootHealth, type BootHealthInput } from '../../src/agent/boot-health.js';
import type { BootState } from '../../src/boot/bootloader.js';
import { run } from '../../src/util/exec.js';
import { cli, makeDevice, ROOT_CMDLINE, type Device } from './device.js';
import { startServer } from './server.js';

const env = (o: Partial<BootState> = {}): BootState => ({ defaultImage: '2', tryImage: null, source: 'grubenv', warnings: [], bad: [], attempt: null, ...o });
const input = (o: Partial<BootHealthInput>): BootHealthInput => ({
  running: '2',
  trial: false,
  boot: env(),
  damaged: [],
  installed: ['1', '2'],
  journal: { lastDefault: '2', bootReport: null },
  ...o,
});

test('planBootHealth: what the agent does about each boot', () => {
  const rows: Array<[string, Partial<BootHealthInput>, { rebuild: string | null; markGood: string | null; events: string[] }]> = [
    ['healthy boot, GRUB counted nothing', {}, { rebuild: null, markGood: null, events: [] }],
    ['healthy boot, GRUB counted it', { boot: env({ attempt: { image: '2', boots: 1 } }) }, { rebuild: null, markGood: '2', events: [] }],
    ['backup damaged', { damaged: ['grubenv.bak is incomplete.'] }, { rebuild: null, markGood: '2', events: ['bootenv-repaired'] }],
    [
      'committed image skipped after its tries',
      { running: '1', boot: env({ bad: ['2'], attempt: { image: '1', boots: 1 } }) },
      { rebuild: null, markGood: '1', events: ['boot-fallback'] },
    ],
    ['trial boot of 3 is no fallback', { running: '3', trial: true, installed: ['1', '2', '3'] }, { rebuild: null, markGood: null, events: [] }],
    [
      'both copies lost on the fallback: the committed 2 is rebuilt, not 1',
      { running: '1', boot: null, damaged: ['both bad.'] },
      { rebuild: '2', markGood: '1', events: ['bootenv-repaired', 'boot-fallback'] },
    ],
    [
      'both copies lost and the committed image gone too: the running image, said so',
      { running: '1', boot: null, installed: ['1'], damaged: ['both bad.'] },
      { rebuild: '1', markGood: '1', events: ['bootenv-repaired'] },
    ],
  ];
  for (const [name, o, want] of rows) {
    const p = planBootHealth(input(o));
    assert.deepEqual({ rebuild: p.rebuild, markGood: p.markGood, events: p.events.map((e) => e.type) }, want, name);
  }
  const lost = planBootHealth(input({ running: '1', boot: null, installed: ['1'], damaged: ['x.'] }));
  assert.match(lost.events[0]!.message, /the running image: the agent knew no committed image/);
  // The same ongoing fallback is reported once.
  const first = planBootHealth(input({ running: '1', boot: env({ bad: ['2'] }) }));
  assert.match(first.events[0]!.message, /Booted 1 instead of the committed 2: GRUB gave up on 2 .* 2 stays the committed default/);
  const again = planBootHealth(input({ running: '1', boot: env({ bad: ['2'] }), journal: { lastDefault: '2', bootReport: first.report } }));
  assert.deepEqual(again.events, []);
  assert.equal(planBootHealth(input({ running: '1', boot: env(), installed: ['1'] })).events[0]!.message.includes('2.img is missing'), true);
});

/** 1.0 upgraded to a committed 2.0 through the real server; the device is enrolled. */
async function committedDevice(): Promise<{ dev: Device; server: Awaited<ReturnType<typeof startServer>> }> {
  const dev = await makeDevice({ running: '1.0', releases: [{ version: '1.0' }, { version: '2.0' }] });
  assert.equal((await cli(dev, ['init', '--default', '1.0'])).code, 0);
  const server = await startServer(dev.storeDir);
  const token = await server.enroll('box-1');
  await dev.writeConfig({ server: { url: server.url, deviceId: 'box-1', token }, download: { useDelta: false } });
  assert.equal((await cli(dev, ['prepare', '--version', '2.0'])).code, 0);
  assert.equal((await cli(dev, ['apply', '--now'])).code, 0);
  assert.equal(await dev.boot(), '2.0');
  const c = await cli(dev, ['confirm', '--json']);
  assert.equal(c.json!.outcome, 'committed', c.stderr);
  return { dev, server };
}

/** Boots `v` by hand as GRUB's fallback would (not a trial). */
async function bootFallback(dev: Device, v: string): Promise<void> {
  await fsp.writeFile(dev.cmdline, `${ROOT_CMDLINE} loop=/images/${v}.img ibu.version=${v} ibu.trial=0\n`);
}

test('confirm at boot: a damaged copy is repaired and reported; a lost env is rebuilt with the committed image, not the fallback', async () => {
  const { dev, server } = await committedDevice();
  try {
    const primary = path.join(dev.grubDir, 'grubenv');
    // The primary overwritten with garbage: the backup is valid, confirm rewrites the primary.
    await fsp.writeFile(primary, Buffer.alloc(1024, 0x5a));
    let r = await cli(dev, ['confirm', '--json']);
    assert.equal(r.json!.outcome, 'not-trial', r.stderr); // nothing to confirm: 2.0 is committed
    assert.match(r.stderr, /bootenv-repaired: .*grubenv.*Rewritten from .*grubenv\.bak/);
    assert.equal((await dev.env()).default_image, '2.0');
    assert.deepEqual(
      server.events.map((e) => e.type),
      ['apply-started', 'upgrade-succeeded', 'bootenv-repaired'],
    );

    // Both copies garbage and GRUB found 1.0 on the disk: the env is rebuilt with 2.0 (the
    // committed image), the device stays on 1.0 until its next boot, and the server is told.
    await fsp.writeFile(primary, Buffer.alloc(1024, 0x5a));
    await fsp.writeFile(path.join(dev.grubDir, 'grubenv.bak'), Buffer.alloc(1024, 0));
    await bootFallback(dev, '1.0');
    r = await cli(dev, ['confirm', '--json']);
    assert.equal((await dev.env()).default_image, '2.0', r.stderr);
    assert.deepEqual(
      server.events.slice(3).map((e) => [e.type, e.error?.code]),
      [
        ['bootenv-repaired', 'BOOTENV_REPAIRED'],
        ['boot-fallback', 'BOOT_FALLBACK'],
      ],
    );
    assert.match(server.events[3]!.error!.message, /rebuilt with default_image=2\.0 \(the committed image the agent last saw\)/);
    const problems = (await server.admin('GET', '/v1/admin/fleet/devices/problems')) as unknown as Array<{ id: string; flags: string[] }>;
    assert.deepEqual(
      problems.map((d) => [d.id, [...d.flags].sort()]),
      [['box-1', ['boot-fallback', 'bootenv-repaired']]],
    );
    // Back on 2.0: the fallback flag clears at the next check-in; the repair stays listed.
    assert.equal(await dev.boot(), '2.0');
    r = await cli(dev, ['check', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const after = (await server.admin('GET', '/v1/admin/fleet/devices/problems')) as unknown as Array<{ id: string; flags: string[] }>;
    assert.deepEqual(
      after.map((d) => [d.id, d.flags]),
      [['box-1', ['bootenv-repaired']]],
    );
  } finally {
    await server.close();
    await dev.cleanup();
  }
});

test('confirm at boot on a fallback after GRUB gave up on the committed image: reported once, the default stays, the counter is reset', async () => {
  const { dev, server } = await committedDevice();
  try {
    // What GRUB leaves after 2.0 used up its boots and 1.0 came up: 2.0 on the skip list, 1.0 counted.
    for (const f of ['grubenv', 'grubenv.bak']) {
      await run('grub-editenv', [path.join(dev.grubDir, f), 'set', 'ibu_bad= 2.0', 'ibu_attempt=1.0', 'ibu_tally=x']);
    }
    await bootFallback(dev, '1.0');
    const r = await cli(dev, ['confirm', '--json']);
    assert.match(r.stderr, /boot-fallback: Booted 1\.0 instead of the committed 2\.0: GRUB gave up on 2\.0/);
    assert.notEqual(r.json!.outcome, 'committed', 'the fallback is never committed by itself');
    const e = await dev.env();
    assert.equal(e.default_image, '2.0');
    const l = (await run('grub-editenv', [path.join(dev.grubDir, 'grubenv.bak'), 'list'])).stdout;
    assert.doesNotMatch(l, /ibu_attempt|ibu_tally/, 'the boot of 1.0 was marked good');
    assert.match(l, /ibu_bad=2\.0/, '2.0 stays skipped until it is installed or tried again');
    await cli(dev, ['confirm', '--json']);
    assert.deepEqual(
      server.events.map((x) => x.type),
      ['apply-started', 'upgrade-succeeded', 'boot-fallback'],
      'one event for one ongoing fallback',
    );
  } finally {
    await server.close();
    await dev.cleanup();
  }
});
