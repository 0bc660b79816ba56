import type { WriteOp } from './types.js';

/**
 * Group commit: check-ins queue their writes, and one transaction commits everything queued
 * since the last flush. Each caller's promise resolves only after its writes are durable, so a
 * device never gets an answer the server could forget, while the database sees a few large
 * transactions instead of thousands of small ones.
 */
export class GroupCommitter {
  private queue: WriteOp[] = [];
  private waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private scheduled = false;
  private writing: Promise<void> | null = null;
  batches = 0;
  ops = 0;

  constructor(
    private readonly write: (ops: readonly WriteOp[]) => Promise<void>,
    private readonly maxOps = 1000,
  ) {}

  submit(ops: readonly WriteOp[]): Promise<void> {
    if (ops.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      for (const op of ops) this.queue.push(op);
      this.waiters.push({ resolve, reject });
      if (this.queue.length >= this.maxOps) void this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        // setImmediate: everything parsed in this turn of the event loop goes into one batch.
        setImmediate(() => {
          this.scheduled = false;
          void this.flush();
        });
      }
    });
  }

  /** Commits what is queued; one transaction at a time, the next batch forms meanwhile. */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
    if (this.queue.length === 0) return;
    const ops = this.queue;
    const waiters = this.waiters;
    this.queue = [];
    this.waiters = [];
    this.writing = (async () => {
      try {
        await this.write(ops);
        this.batches++;
        this.ops += ops.length;
        for (const w of waiters) w.resolve();
      } catch (err) {
        for (const w of waiters) w.reject(err);
      }
    })();
    try {
      await this.writing;
    } finally {
      this.writing = null;
    }
  }

  async close(): Promise<void> {
    while (this.queue.length || this.writing) await this.flush();
  }
}
