import { readFileSync } from 'node:fs';
import { applyDelta } from '../../src/delta/index.js';

// Child process of memory.test.ts: applies a delta and reports its peak RSS. Run without
// arguments (as `node --test` does with every file under test/) it does nothing.
//
// Peak RSS is VmHWM from /proc/self/status, not process.resourceUsage().maxRSS: getrusage's
// maxrss survives execve, so a child forked from a big test process inherits the parent's peak.
const [source, delta, out] = process.argv.slice(2);
if (source && delta && out) {
  const r = await applyDelta({ sourceImage: source, delta, out });
  const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  process.stdout.write(
    JSON.stringify({ maxRssKiB: hwm ? Number(hwm[1]) : process.resourceUsage().maxRSS, targetSize: r.targetSize, bytesWritten: r.bytesWritten }) + '\n',
  );
}
