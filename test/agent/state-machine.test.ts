import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nextStep, rollbackTarget, type DeviceFacts } from '../../src/agent/state-machine.js';
import { emptyJournal, type Journal } from '../../src/agent/journal.js';

const facts = (p: Partial<DeviceFacts> = {}): DeviceFacts => ({
  running: '1',
  boot: { defaultImage: '1', tryImage: null },
  installed: ['1'],
  partials: [],
  ...p,
});
const journal = (p: Partial<Journal> = {}): Journal => ({ ...emptyJournal(), ...p });
const T = { version: '2', fromVersion: '1' };
const SW = (method: 'reboot' | 'kexec' | 'soft-reboot', bootId: string | null = 'boot-a') => ({ method, reason: 'test', bootId });

test('prepare: resolves, then walks the steps, skipping what the disk already shows', () => {
  assert.equal(nextStep(journal(), facts(), { kind: 'prepare' }).kind, 'resolve-target');
  const prep = (step: Journal['step'], f: Partial<DeviceFacts> = {}) =>
    nextStep(journal({ state: 'preparing', step, target: T }), facts(f), { kind: 'prepare', version: '2' }).kind;
  assert.equal(prep('resolve-target'), 'reserve-space');
  assert.equal(prep('reserve-space'), 'download');
  assert.equal(prep('download', { partials: ['2'] }), 'verify');
  assert.equal(prep('verify', { partials: ['2'] }), 'fsck');
  assert.equal(prep('fsck', { partials: ['2'] }), 'install');
  // the staged download vanished (e.g. deleted as corrupt): download again
  assert.equal(prep('verify'), 'reserve-space');
  // installed already (a kill after the rename, before the record): just record it
  assert.equal(prep('fsck', { installed: ['1', '2'] }), 'mark-prepared');
  assert.equal(prep(null, { installed: ['1', '2'] }), 'mark-prepared');
  const done = nextStep(journal({ state: 'prepared', target: T }), facts({ installed: ['1', '2'] }), { kind: 'prepare', version: '2' });
  assert.equal(done.kind, 'done');
  // another version asked for: re-resolve
  assert.equal(nextStep(journal({ state: 'prepared', target: T }), facts({ installed: ['1', '2'] }), { kind: 'prepare', version: '3' }).kind, 'resolve-target');
  // while an upgrade is being applied, prepare stays out of the way
  assert.equal(nextStep(journal({ state: 'applying', target: T }), facts(), { kind: 'prepare' }).kind, 'done');
});

test('apply: migrate → checkpoint → choose-method → set-try → reboot, resuming from the facts', () => {
  const f2 = facts({ installed: ['1', '2'] });
  assert.equal(nextStep(journal(), f2, { kind: 'apply' }).kind, 'fail');
  assert.equal(nextStep(journal({ state: 'prepared', target: T }), f2, { kind: 'apply' }).kind, 'migrate');
  const ap = (step: Journal['step'], f: DeviceFacts = f2) => nextStep(journal({ state: 'applying', step, target: T }), f, { kind: 'apply' }).kind;
  assert.equal(ap(null), 'migrate');
  assert.equal(ap('migrate'), 'checkpoint');
  assert.equal(ap('checkpoint'), 'choose-method');
  assert.equal(ap('choose-method'), 'set-try'); // no switch recorded: the plain reboot
  assert.equal(nextStep(journal({ state: 'applying', step: 'choose-method', target: T, switch: SW('reboot') }), f2, { kind: 'apply' }).kind, 'set-try');
  // try already set (kill before the record): straight to the reboot
  assert.equal(ap('checkpoint', facts({ installed: ['1', '2'], boot: { defaultImage: '1', tryImage: '2' } })), 'reboot');
  assert.equal(ap('set-try', facts({ installed: ['1', '2'], boot: { defaultImage: '1', tryImage: '2' } })), 'reboot');
  // try consumed and we are on the old image: the trial failed
  assert.equal(ap('reboot'), 'record-fallback');
  // the image went missing
  assert.equal(nextStep(journal({ state: 'prepared', target: T }), facts(), { kind: 'apply' }).kind, 'fail');
});

test('apply by kexec or soft-reboot: no try flag; the same boot id means the switch has not happened yet', () => {
  for (const m of ['kexec', 'soft-reboot'] as const) {
    const f = facts({ installed: ['1', '2'], bootId: 'boot-a' });
    const ap = (step: Journal['step'], ff: DeviceFacts = f) =>
      nextStep(journal({ state: 'applying', step, target: T, switch: SW(m) }), ff, { kind: 'apply' }).kind;
    assert.equal(ap('choose-method'), 'load-switch', m);
    assert.equal(ap('load-switch'), 'reboot', m);
    // killed before the switch (same boot): load and switch again, not a failed trial
    assert.equal(ap('reboot'), 'load-switch', m);
    // another boot and back on 1: the trial ran and failed (panic → firmware → GRUB's default)
    assert.equal(ap('reboot', facts({ installed: ['1', '2'], bootId: 'boot-b' })), 'record-fallback', m);
    const conf = (ff: DeviceFacts) => nextStep(journal({ state: 'applying', step: 'reboot', target: T, switch: SW(m) }), ff, { kind: 'confirm' }).kind;
    assert.equal(conf(f), 'done', `${m}: confirm in the same boot waits`);
    assert.equal(conf(facts({ installed: ['1', '2'], bootId: 'boot-b' })), 'record-fallback', m);
    // the trial itself, entered without GRUB: running 2, default 1 → health, as after a reboot
    assert.equal(conf(facts({ running: '2', installed: ['1', '2'], bootId: 'boot-b' })), 'health', m);
  }
});

test('confirm: trial → health → commit; fallback recorded; normal boots left alone', () => {
  const trial = facts({ running: '2', installed: ['1', '2'] });
  assert.equal(nextStep(journal({ state: 'applying', step: 'reboot', target: T }), trial, { kind: 'confirm' }).kind, 'health');
  assert.equal(nextStep(journal({ state: 'trial', step: 'health', target: T }), trial, { kind: 'confirm' }).kind, 'commit');
  assert.equal(nextStep(journal({ state: 'trial', step: null, target: T }), trial, { kind: 'confirm' }).kind, 'health');
  // committed in grubenv but not recorded
  const committed = facts({ running: '2', boot: { defaultImage: '2', tryImage: null }, installed: ['1', '2'] });
  assert.equal(nextStep(journal({ state: 'trial', step: 'health', target: T }), committed, { kind: 'confirm' }).kind, 'commit');
  assert.equal(nextStep(journal({ state: 'committed', step: 'commit', target: T }), committed, { kind: 'confirm' }).kind, 'done');
  // back on 1 after a trial that never confirmed
  assert.equal(
    nextStep(journal({ state: 'applying', step: 'reboot', target: T }), facts({ installed: ['1', '2'] }), { kind: 'confirm' }).kind,
    'record-fallback',
  );
  assert.equal(nextStep(journal({ state: 'trial', step: null, target: T }), facts({ installed: ['1', '2'] }), { kind: 'confirm' }).kind, 'record-fallback');
  // an interrupted apply (try never set) is not a failed trial
  assert.equal(nextStep(journal({ state: 'applying', step: 'migrate', target: T }), facts({ installed: ['1', '2'] }), { kind: 'confirm' }).kind, 'done');
  // after a revert was recorded but the reboot did not happen yet
  assert.deepEqual(nextStep(journal({ state: 'rolled-back', step: 'revert', target: T }), trial, { kind: 'confirm' }), { kind: 'reboot', why: 'revert' });
  assert.equal(nextStep(journal(), facts({ running: null }), { kind: 'confirm' }).kind, 'fail');
});

test('rollback: leave a trial, cancel a pending try, or go back to the previous committed image', () => {
  const trial = facts({ running: '2', installed: ['1', '2'] });
  assert.equal(nextStep(journal({ state: 'trial', target: T }), trial, { kind: 'rollback' }).kind, 'revert');
  assert.equal(
    nextStep(journal({ state: 'applying', step: 'set-try', target: T }), facts({ installed: ['1', '2'], boot: { defaultImage: '1', tryImage: '2' } }), {
      kind: 'rollback',
    }).kind,
    'cancel-try',
  );
  // a failed migration left it half applied: cancel, never touch the committed default
  assert.equal(
    nextStep(journal({ state: 'applying', step: null, target: T, previous: '0.9' }), facts({ installed: ['0.9', '1', '2'] }), { kind: 'rollback' }).kind,
    'cancel-try',
  );
  const onTwo = facts({ running: '2', boot: { defaultImage: '2', tryImage: null }, installed: ['0.9', '1', '2'] });
  assert.deepEqual(nextStep(journal({ state: 'committed', target: T, previous: '1' }), onTwo, { kind: 'rollback' }), { kind: 'rollback-committed', to: '1' });
  assert.equal(rollbackTarget(journal({ previous: '1.5' }), onTwo), '1', 'previous not installed: newest older image');
  assert.equal(nextStep(journal(), facts(), { kind: 'rollback' }).kind, 'fail');
});
