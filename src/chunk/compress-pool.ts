import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { chunkCompressor } from './compress.js';

/**
 * zstd compression on worker threads, so cutting + hashing (main thread) and compressing run
 * on different cores. With `threads: 0` it compresses in the calling thread (same results).
 */
/** Worker threads when not given: cores - 1 (the chunker keeps one), at least 1. */
export const defaultCompressThreads = (): number => Math.max(1, availableParallelism() - 1);

export class CompressPool {
  private readonly workers: Worker[] = [];
  private readonly waiting = new Map<number, { resolve: (b: Buffer) => void; reject: (e: unknown) => void }>();
  private readonly inline?: (d: Uint8Array) => Buffer;
  private seq = 0;
  private next = 0;
  private inFlight = 0;

  constructor(level: number, threads = defaultCompressThreads()) {
    if (threads <= 0) {
      this.inline = chunkCompressor(level);
      return;
    }
    const ts = import.meta.url.endsWith('.ts');
    const url = new URL(ts ? './compress-worker.ts' : './compress-worker.js', import.meta.url);
    for (let i = 0; i < threads; i++) {
      // Under tsx (tests, benches) the worker must register the TypeScript loader itself.
      // execArgv: [] — the parent's flags may include `-e CODE` (e.g. `node -e`), which a worker
      // would otherwise run instead of its own file.
      const w = ts
        ? new Worker(`import('tsx/esm/api').then((t) => { t.register(); return import(${JSON.stringify(url.href)}); });`, {
            eval: true,
            workerData: { level },
            execArgv: [],
          })
        : new Worker(url, { workerData: { level }, execArgv: [] });
      w.on('message', (m: { seq: number; data: Uint8Array }) => {
        const p = this.waiting.get(m.seq);
        this.waiting.delete(m.seq);
        this.inFlight--;
        p?.resolve(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
      });
      w.on('error', (err) => {
        for (const p of this.waiting.values()) p.reject(err);
        this.waiting.clear();
      });
      this.workers.push(w);
    }
  }

  get pending(): number {
    return this.inFlight;
  }

  /** Compresses a copy of `data` (the caller may reuse its buffer at once). */
  compress(data: Uint8Array): Promise<Buffer> {
    if (this.inline) return Promise.resolve(this.inline(data));
    const copy = new Uint8Array(data); // detached copy, transferred to the worker
    const seq = ++this.seq;
    const w = this.workers[this.next++ % this.workers.length]!;
    this.inFlight++;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      w.postMessage({ seq, data: copy }, [copy.buffer]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
