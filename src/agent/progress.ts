/**
 * A one-line download progress bar on a TTY (stderr), redrawn at most every 100 ms; silent when
 * stderr is not a terminal or when --json is on, so machine output stays clean.
 */
export class ProgressBar {
  private last = 0;
  private readonly t0 = Date.now();
  private drawn = false;
  constructor(
    private readonly label: string,
    private readonly enabled: boolean = Boolean(process.stderr.isTTY),
  ) {}

  update(done: number, total: number, extra = ''): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 100 && done < total) return;
    this.last = now;
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 30;
    const fill = Math.round(frac * width);
    const secs = (now - this.t0) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const eta = rate > 0 && total > done ? `${Math.ceil((total - done) / rate)} s` : '-';
    const line = `${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${mib(done)}/${mib(total)} ${mib(rate)}/s ETA ${eta}${extra ? ' ' + extra : ''}`;
    process.stderr.write(`\r${line.slice(0, (process.stderr.columns ?? 120) - 1)}\x1b[K`);
    this.drawn = true;
  }

  end(): void {
    if (this.enabled && this.drawn) process.stderr.write('\n');
    this.drawn = false;
  }
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)}M`;
}
