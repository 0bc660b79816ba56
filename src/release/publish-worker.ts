import { parentPort, workerData } from 'node:worker_threads';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { readImageFacts } from './file-map.js';

/**
 * Side work of a publish, run on its own thread while the main thread cuts and hashes chunks:
 * the whole-image sha256 (it reads the file itself, from the page cache) or the file map.
 */
const job = workerData as { kind: 'sha256'; image: string } | { kind: 'facts'; image: string; requireKernel: boolean };
try {
  if (job.kind === 'sha256') {
    const h = createHash('sha256');
    const fd = openSync(job.image, 'r');
    try {
      const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
      for (let off = 0; ;) {
        const n = readSync(fd, buf, 0, buf.length, off);
        if (n === 0) break;
        h.update(buf.subarray(0, n));
        off += n;
      }
    } finally {
      closeSync(fd);
    }
    parentPort!.postMessage({ ok: true, value: h.digest('hex') });
  } else {
    parentPort!.postMessage({ ok: true, value: readImageFacts(job.image, { requireKernel: job.requireKernel }) });
  }
} catch (err) {
  const e = err as { code?: string; message?: string };
  parentPort!.postMessage({ ok: false, code: e.code, message: e.message ?? String(err) });
}
