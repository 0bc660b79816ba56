import { formatBytes } from './bytes.js';

/** One redraw of a progress bar. */
export interface ProgressFrame {
  done: number;
  total: number;
  /** Replaces the bar's label (a fetch names its phase). */
  label?: string;
  /** The byte count whose rate is shown (default `done`; a fetch shows what it downloaded, not what it reused). */
  rateBytes?: number;
  /** Bytes still to come at that rate, for the ETA (default `total - done`). */
  leftBytes?: number;
  extra?: string;
}

/**
 * A one-line progress bar on stderr, redrawn at most every 100 ms; silent when stderr is not a
 * terminal or when --json is on, so machine output stays clean. The agent's downloads and
 * `ibu release fetch` draw the same bar.
 */
export class ProgressBar {
  private last = 0;
  private readonly t0 = Date.now();
  private drawn = false;
  constructor(
    private readonly label: string,
    private readonly enabled: boolean = Boolean(process.stderr.isTTY),
  ) {}

  update(f: ProgressFrame): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 100 && f.done < f.total) return;
    this.last = now;
    process.stderr.write(`\r${renderProgress(f.label ?? this.label, f, (now - this.t0) / 1000).slice(0, (process.stderr.columns ?? 120) - 1)}\x1b[K`);
    this.drawn = true;
  }

  end(): void {
    if (this.enabled && this.drawn) process.stderr.write('\n');
    this.drawn = false;
  }
}

/** The bar's text (pure, for tests): label, bar, percent, bytes, rate, ETA. */
export function renderProgress(label: string, f: ProgressFrame, seconds: number): string {
  const frac = f.total > 0 ? Math.min(1, f.done / f.total) : 0;
  const width = 30;
  const fill = Math.round(frac * width);
  const rate = seconds > 0 ? (f.rateBytes ?? f.done) / seconds : 0;
  const left = f.leftBytes ?? Math.max(0, f.total - f.done);
  const eta = rate > 0 && left > 0 ? `${Math.ceil(left / rate)} s` : '-';
  const pct = `${(frac * 100).toFixed(0).padStart(3)}%`;
  const bar = `[${'#'.repeat(fill)}${'.'.repeat(width - fill)}]`;
  return `${label} ${bar} ${pct} ${formatBytes(f.done)}/${formatBytes(f.total)} ${formatBytes(rate)}/s ETA ${eta}${f.extra ? ' ' + f.extra : ''}`;
}

/** The counters a chunk fetch reports (src/release/fetch.ts FetchProgress), as seen by the bar. */
export interface FetchCounts {
  phase: string;
  totalBytes: number;
  reusedBytes: number;
  downloadedBytes: number;
  writtenBytes: number;
  neededDownloadBytes?: number;
}

/** A fetch's frame: image bytes in place against the total; rate and ETA over what is downloaded. */
export function fetchFrame(p: FetchCounts, label?: string): ProgressFrame {
  const left = p.neededDownloadBytes !== undefined ? Math.max(0, p.neededDownloadBytes - p.downloadedBytes) : undefined;
  return {
    done: p.writtenBytes,
    total: p.totalBytes,
    label: label ?? p.phase,
    rateBytes: p.downloadedBytes,
    leftBytes: left,
    extra: `reused ${formatBytes(p.reusedBytes)}, downloaded ${formatBytes(p.downloadedBytes)}`,
  };
}
