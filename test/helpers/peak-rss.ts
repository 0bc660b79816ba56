import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Runs `body` (an async ES module snippet that sets `result`) in a fresh node process and
 * returns what it set plus the child's peak RSS in bytes (process.resourceUsage().maxRSS): a
 * size, never a time, so memory-bound tests hold on a slow or busy machine. `dist` is the
 * compiled tree root, so the snippet imports e.g. `${dist}/src/chunk/compress.js`.
 */
export function peakRss<T>(body: string): { result: T; maxRssBytes: number } {
  const dist = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
  const script =
    `const dist = ${JSON.stringify(dist)}; let result;\n` +
    `try {\n${body}\n} catch (e) { result = { code: e.code ?? 'THROWN', message: String(e.message) }; }\n` +
    `process.stdout.write(JSON.stringify({ result, maxRss: process.resourceUsage().maxRSS * 1024 }));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', maxBuffer: 1 << 20 });
  const j = JSON.parse(out) as { result: T; maxRss: number };
  return { result: j.result, maxRssBytes: j.maxRss };
}

export const MiB = 1024 * 1024;
