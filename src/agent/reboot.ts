import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { AgentContext } from './agent-context.js';
import type { End } from './command-result.js';
import type { RebootConfig } from './config.js';
import { flushEvents, queueEvent } from './events.js';
import type { EscalationRecord } from './journal.js';
import type { RebootMethod } from './reboot-method.js';
import { bootId } from './switch.js';

export interface EscalationStep {
  /** What the log and the report call it. */
  name: string;
  /** Seconds after the previous step. */
  afterSeconds: number;
  argv?: string[];
  /** Written to /proc/sysrq-trigger: `s` (emergency sync, queued, never waits) then `b` (reset). */
  sysrq?: boolean;
  /** Added to the command's environment. */
  env?: Record<string, string>;
}

/**
 * systemd 255+ turns `systemctl reboot` into a kexec when a kernel is loaded (`kexec -l`) and into a
 * soft-reboot when /run/nextroot holds an OS tree (systemctl(1)). A reboot the agent asks for must
 * go through the firmware and GRUB (the revert after a failed trial lands on the committed image
 * only that way), whatever an earlier switch left loaded or mounted. The fast methods name their
 * own verbs (`systemctl kexec`, `systemctl soft-reboot`), which these variables do not touch.
 */
export const FULL_REBOOT_ENV: Readonly<Record<string, string>> = { SYSTEMCTL_SKIP_AUTO_KEXEC: '1', SYSTEMCTL_SKIP_AUTO_SOFT_REBOOT: '1' };

/**
 * The ladder a switch climbs while it does not happen (issue #18 item 5): the method's own
 * command (`systemctl reboot`, `systemctl kexec`, `systemctl soft-reboot`), then the forced
 * reboot (`reboot -f`: no unit stops, so a process stuck in D state no longer holds it up), then
 * sysrq `b` (an immediate reset, no sync, no unmount: it cannot block). A hardware or softdog
 * watchdog stays the last word when even the agent hangs. Pure.
 */
export function escalationPlan(cfg: RebootConfig, method: RebootMethod): EscalationStep[] {
  const first = method === 'kexec' ? cfg.kexecCommand : method === 'soft-reboot' ? cfg.softRebootCommand : cfg.command;
  const steps: EscalationStep[] = [{ name: first.join(' '), afterSeconds: 0, argv: first, env: { ...FULL_REBOOT_ENV } }];
  // kexec's forced form still enters the trial; the others' is a full reboot.
  const force = method === 'kexec' ? ['kexec', '-e'] : cfg.forceCommand;
  if (cfg.forceAfterSeconds > 0 && force.join(' ') !== first.join(' '))
    steps.push({ name: force.join(' '), afterSeconds: cfg.forceAfterSeconds, argv: force, env: { ...FULL_REBOOT_ENV } });
  if (cfg.sysrqAfterSeconds > 0) steps.push({ name: 'sysrq b', afterSeconds: cfg.sysrqAfterSeconds, sysrq: true });
  return steps;
}

/** Starts a command; the promise settles when it exits. The ladder does not wait for it: a reboot command that hangs must not hold up the next step. */
function start(argv: string[], log: (l: string) => void, env: Record<string, string> = {}): Promise<void> {
  return new Promise((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore', env: { ...process.env, ...env } });
    child.on('error', (e) => {
      log(`${argv.join(' ')}: ${e.message}`);
      resolve();
    });
    child.on('close', () => resolve());
  });
}

async function sysrq(log: (l: string) => void): Promise<void> {
  const trigger = path.join(process.env.IBU_SWITCH_PROBE_ROOT ?? '/', 'proc/sysrq-trigger');
  try {
    await fsp.writeFile(trigger, 's');
    await new Promise((r) => setTimeout(r, 1000));
    await fsp.writeFile(trigger, 'b');
  } catch (err) {
    log(`sysrq failed: ${(err as Error).message}`);
  }
}

/** A journal write that cannot stall the ladder (the host fs may be the thing that hangs). */
function recordSoon(ctx: AgentContext, rec: EscalationRecord): void {
  ctx.journal.j.escalation = rec;
  ctx.journal.save().catch((err: Error) => ctx.log(`could not record the reboot step: ${err.message}`));
}

/**
 * Records the reboot step (for an apply), reports what is queued, and switches: a full reboot,
 * kexec or soft-reboot (`method`). A switch that happens ends this process; while it is still
 * alive the escalation ladder goes on, each step logged and kept in the journal, which the next
 * boot reports (reportEscalation).
 */
export async function reboot(ctx: AgentContext, why: 'apply' | 'revert', method: RebootMethod = 'reboot'): Promise<End> {
  if (ctx.journal.j.step !== 'reboot' && why === 'apply') await ctx.journal.record({ step: 'reboot' });
  await flushEvents(ctx.journal, ctx.server, ctx.log).catch(() => {});
  const facts = await ctx.facts().catch(() => null);
  const to = why === 'apply' ? (ctx.journal.j.target?.version ?? null) : (facts?.boot.defaultImage ?? null);
  const rec: EscalationRecord = { why, bootId: await bootId(), from: facts?.running ?? null, to, method, steps: [] };
  const steps = escalationPlan(ctx.cfg.reboot, method);
  for (const [i, s] of steps.entries()) {
    ctx.log(i === 0 ? `rebooting (${method}): ${s.name}` : `still running ${s.afterSeconds} s after '${steps[i - 1]!.name}'; escalating: ${s.name}`);
    rec.steps = [...rec.steps, { step: s.name, at: ctx.now().toISOString() }];
    recordSoon(ctx, { ...rec });
    const exited = s.argv ? start(s.argv, ctx.log, s.env) : sysrq(ctx.log);
    const next = steps[i + 1];
    // The next step comes after its delay whether or not this one returned (a hung `systemctl
    // reboot` is the case to get out of); the last one is waited for, as a plain reboot always was
    // (in a systemd unit, exiting early would let systemd kill the command with the unit's cgroup).
    if (next) await new Promise((r) => setTimeout(r, next.afterSeconds * 1000));
    else await exited;
  }
  const target = ctx.journal.j.target?.version;
  return {
    outcome: 'rebooting',
    message: why === 'apply' ? `Switching into ${target} for a trial boot (${method}).` : 'Rebooting into the committed image.',
  };
}

/**
 * At the first run after a reboot: a switch that needed more than its first step is reported
 * (event reboot-stuck) with the steps it took; the record is dropped either way.
 */
export async function reportEscalation(ctx: AgentContext): Promise<void> {
  const rec = ctx.journal.j.escalation;
  if (!rec) return;
  if (rec.bootId !== null && rec.bootId === (await bootId())) return; // still the same boot: not over yet
  if (rec.steps.length > 1) {
    const msg =
      `The ${rec.why === 'apply' ? 'switch' : 'reboot'} by ${rec.method} did not happen by itself; it escalated through ` +
      `${rec.steps.map((s) => `'${s.step}' (${s.at})`).join(', ')}. A process stuck in I/O (D state) or a hung service is the usual cause.`;
    ctx.log(`reboot-stuck: ${msg}`);
    queueEvent(ctx.journal, ctx.now(), 'reboot-stuck', rec.from, rec.to, { code: 'REBOOT_STUCK', message: msg });
  }
  await ctx.journal.record({ escalation: null });
}
