/**
 * The pure parts of issue #18: which method a switch uses (reboot, kexec, soft-reboot, auto), the
 * trial's kexec command line, the stuck-reboot escalation ladder, and the config keys.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseRebootMethod, kexecCommandLine, parseLockdown, parseSystemdVersion, type SwitchFacts } from '../../src/agent/reboot-method.js';
import { escalationPlan } from '../../src/agent/reboot.js';
import { validateConfig } from '../../src/agent/config.js';
import { isIbuError } from '../../src/errors.js';

const F = (p: { same?: boolean | null; kernel?: boolean; lockdown?: string | null; tool?: boolean; systemd?: number | null } = {}): SwitchFacts => ({
  sameKernel: p.same === undefined ? false : p.same,
  kexec: { kernel: p.kernel ?? true, lockdown: p.lockdown === undefined ? 'none' : p.lockdown, tool: p.tool ?? true },
  systemd: p.systemd === undefined ? 257 : p.systemd,
});

test('auto: soft-reboot when the kernel and initrd are unchanged, else kexec where possible, else reboot', () => {
  const m = (f: SwitchFacts) => chooseRebootMethod('auto', f).method;
  assert.equal(m(F({ same: true })), 'soft-reboot');
  assert.equal(m(F({ same: false })), 'kexec');
  assert.equal(m(F({ same: null })), 'kexec'); // kernels not comparable: never soft-reboot
  assert.equal(m(F({ same: true, systemd: 252 })), 'kexec'); // Debian 12's systemd has no soft-reboot
  assert.equal(m(F({ same: true, systemd: null })), 'kexec'); // PID 1 is not systemd
  assert.equal(m(F({ kernel: false })), 'reboot');
  assert.equal(m(F({ lockdown: 'integrity' })), 'reboot');
  assert.equal(m(F({ lockdown: null })), 'kexec'); // no lockdown LSM at all
  assert.equal(m(F({ tool: false })), 'reboot');
  assert.match(
    chooseRebootMethod('auto', F({ lockdown: 'confidentiality' })).reason,
    /no soft-reboot: the new image has a different kernel.*no kexec: the kernel is locked down \(confidentiality, Secure Boot\); rebooting normally/,
  );
});

test('a method asked for by name falls back in the same order, and says why', () => {
  assert.deepEqual(chooseRebootMethod('reboot', F({ same: true })), { method: 'reboot', reason: 'reboot.method is reboot' });
  assert.equal(chooseRebootMethod('kexec', F({ same: true })).method, 'kexec'); // kexec asked: no soft-reboot even if possible
  const k = chooseRebootMethod('kexec', F({ kernel: false }));
  assert.equal(k.method, 'reboot');
  assert.match(k.reason, /no kexec: the running kernel has no kexec support/);
  assert.equal(chooseRebootMethod('soft-reboot', F({ same: true })).method, 'soft-reboot');
  const s = chooseRebootMethod('soft-reboot', F({ same: false }));
  assert.equal(s.method, 'kexec');
  assert.match(s.reason, /no soft-reboot: the new image has a different kernel or initrd; kexec is available/);
});

test('facts parsed from the kernel and systemd', () => {
  assert.equal(parseLockdown('[none] integrity confidentiality\n'), 'none');
  assert.equal(parseLockdown('none [integrity] confidentiality\n'), 'integrity');
  assert.equal(parseLockdown(null), null);
  assert.equal(parseSystemdVersion('systemd 257 (257.9-1~deb13u1)\n+PAM +AUDIT'), 257);
  assert.equal(parseSystemdVersion('systemd 252 (252.39-1~deb12u1)'), 252);
  assert.equal(parseSystemdVersion('busybox'), null);
});

test('the kexec command line is what GRUB would give the trial', () => {
  const grub1 =
    'BOOT_IMAGE=(loop)/vmlinuz root=UUID=0f0e-11 loop=/images/1.0.img boot=ibu ro panic=5 ibu.version=1.0 ibu.trial=0 ' +
    'ibu.attempt=1.0 ibu.tally=x ibu.bad= console=ttyS0';
  assert.equal(kexecCommandLine(grub1, '2.0'), 'root=UUID=0f0e-11 loop=/images/2.0.img boot=ibu ro panic=5 console=ttyS0 ibu.version=2.0 ibu.trial=1');
  // a running image booted without loop= still gets one
  assert.equal(kexecCommandLine('root=/dev/vda2 quiet\n', '2026.11.2'), 'root=/dev/vda2 quiet loop=/images/2026.11.2.img ibu.version=2026.11.2 ibu.trial=1');
});

test('a stuck switch escalates: the method command, its forced form, then sysrq b', () => {
  const cfg = validateConfig({}, 'agent.json').reboot;
  const plan = (m: 'reboot' | 'kexec' | 'soft-reboot') => escalationPlan(cfg, m).map((s) => [s.name, s.afterSeconds]);
  assert.deepEqual(plan('reboot'), [
    ['systemctl reboot', 0],
    ['reboot -f', 120],
    ['sysrq b', 60],
  ]);
  assert.deepEqual(plan('kexec'), [
    ['systemctl kexec', 0],
    ['kexec -e', 120], // still enters the trial, without stopping units
    ['sysrq b', 60],
  ]);
  assert.deepEqual(plan('soft-reboot'), [
    ['systemctl soft-reboot', 0],
    ['reboot -f', 120],
    ['sysrq b', 60],
  ]);
  const none = validateConfig({ reboot: { forceAfterSeconds: 0, sysrqAfterSeconds: 0, kexecCommand: ['kexec', '-e'] } }, 'agent.json').reboot;
  assert.deepEqual(
    escalationPlan(none, 'kexec').map((s) => s.name),
    ['kexec -e'],
  );
  // systemd 257's `systemctl reboot` would kexec a loaded kernel or soft-reboot into a prepared
  // /run/nextroot: every command of every ladder runs with both turned off
  for (const m of ['reboot', 'kexec', 'soft-reboot'] as const)
    for (const s of escalationPlan(cfg, m).filter((s) => s.argv))
      assert.deepEqual(s.env, { SYSTEMCTL_SKIP_AUTO_KEXEC: '1', SYSTEMCTL_SKIP_AUTO_SOFT_REBOOT: '1' }, `${m}: ${s.name}`);
});

test('reboot.method and the new reboot keys are validated with the rest of the config', () => {
  const cfg = validateConfig({ reboot: { method: 'auto' } }, 'agent.json');
  assert.equal(cfg.reboot.method, 'auto');
  assert.equal(validateConfig({}, 'agent.json').reboot.method, 'reboot', "default: today's full reboot");
  try {
    validateConfig({ reboot: { method: 'warp', kexecCommand: 'kexec -e', sysrqAfterSeconds: -1, typo: 1 } }, 'agent.json');
    assert.fail('accepted');
  } catch (err) {
    assert.ok(isIbuError(err, 'CONFIG_INVALID'));
    const problems = (err.details as { problems: string[] }).problems;
    assert.deepEqual(problems, [
      'reboot.method must be one of reboot, kexec, soft-reboot, auto, got "warp"',
      'reboot.kexecCommand must be a non-empty array of strings (an argv, no shell)',
      'reboot.sysrqAfterSeconds must be a number >= 0',
      "unknown key 'reboot.typo'",
    ]);
  }
});
