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

test('apply: migrate → checkpoint → set-try → reboot, resuming from the facts', () => {
  const f2 = facts({ installed: ['1', '2'] });
  assert.equal(nextStep(journal(), f2, { kind: 'apply' }).kind, 'fail');
  assert.equal(nextStep(journal({ state: 'prepared', target: T }), f2, { kind: 'apply' }).kind, 'migrate');
  const ap = (step: Journal['step'], f: DeviceFacts = f2) => nextStep(journal({ state: 'applying', step, target: T }), f, { kind: 'apply' }).kind;
  assert.equal(ap(null), 'migrate');
  assert.equal(ap('migrate'), 'checkpoint');
  assert.equal(ap('checkpoint'), 'set-try');
  // try already set (kill before the record): straight to the reboot
  assert.equal(ap('checkpoint', facts({ installed: ['1', '2'], boot: { defaultImage: '1', tryImage: '2' } })), 'reboot');
  assert.equal(ap('set-try', facts({ installed: ['1', '2'], boot: { defaultImage: '1', tryImage: '2' } })), 'reboot');
  // try consumed and we are on the old image: the trial failed
  assert.equal(ap('reboot'), 'record-fallback');
  // the image went missing
  assert.equal(nextStep(journal({ state: 'prepared', target: T }), facts(), { kind: 'apply' }).kind, 'fail');
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
