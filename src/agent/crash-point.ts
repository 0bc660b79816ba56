/**
 * Fault injection for the crash harness (test/agent/crash.test.ts). With IBU_AGENT_CRASH_AT=N
 * the process SIGKILLs itself at the N-th crash point it passes (1-based), the way power loss or
 * the OOM killer would stop it: no finally blocks, no flushing. Unset in production: a no-op.
 */
let passed = 0;
const at = Number(process.env.IBU_AGENT_CRASH_AT ?? 0);

export function crashPoint(label: string): void {
  passed++;
  if (process.env.IBU_AGENT_CRASH_TRACE) process.stderr.write(`crash-point ${passed} ${label}\n`);
  if (at > 0 && passed === at) process.kill(process.pid, 'SIGKILL');
}

/** During downloads: SIGKILL once this many bytes were written (IBU_AGENT_CRASH_AFTER_BYTES). */
const afterBytes = Number(process.env.IBU_AGENT_CRASH_AFTER_BYTES ?? 0);
let written = 0;
export function crashAfterBytes(n: number): void {
  if (afterBytes <= 0) return;
  written += n;
  if (written >= afterBytes) process.kill(process.pid, 'SIGKILL');
}
