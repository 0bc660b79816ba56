/** Sleeps for the simulation: each ends at once when the simulation stops, so draining does not wait out intervals. */
export class Naps {
  stopping = false;
  private readonly waiting = new Set<() => void>();

  nap(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.stopping) return resolve();
      const done = () => {
        clearTimeout(t);
        this.waiting.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.waiting.add(done);
    });
  }

  /** Sleeps ms and returns when the caller meant to wake (the due time of its next request, performance.now()). */
  async napUntil(ms: number): Promise<number> {
    const due = performance.now() + ms;
    await this.nap(ms);
    return due;
  }

  stopAll(): void {
    this.stopping = true;
    for (const wake of [...this.waiting]) wake();
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** A sleep that does not keep the process alive (for races against a deadline). */
export const unrefSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
