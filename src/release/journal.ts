import { promises as fsp } from 'node:fs';
import { withContext } from '../errors.js';

/**
 * The resume journal beside a `.partial` download (`OUT.img.partial.journal`): a JSON header
 * line naming the manifest, then one line per chunk index whose bytes are in the partial file.
 * Lines are appended only after the partial file was fdatasync'ed, so a line never claims
 * bytes a crash could lose. A torn last line (no newline) is ignored.
 */
export interface JournalHeader {
  format: 1;
  manifestSha256: string;
  imageSize: number;
}

export class FetchJournal {
  private buffered: number[] = [];
  private constructor(
    private readonly fh: fsp.FileHandle,
    readonly path: string,
  ) {}

  /** Opens the journal; returns the chunk indexes already done, or an empty set for a fresh start. */
  static async open(file: string, header: JournalHeader): Promise<{ journal: FetchJournal; done: Set<number>; resumed: boolean }> {
    const done = new Set<number>();
    let resumed = false;
    try {
      const text = await fsp.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? '' : Promise.reject(e)));
      const lines = text.split('\n');
      const complete = lines.slice(0, -1); // the last element is '' or a torn line: drop it
      if (complete.length > 0) {
        let h: Partial<JournalHeader> | undefined;
        try {
          h = JSON.parse(complete[0]!) as Partial<JournalHeader>;
        } catch {
          h = undefined;
        }
        if (h && h.format === 1 && h.manifestSha256 === header.manifestSha256 && h.imageSize === header.imageSize) {
          resumed = true;
          for (const l of complete.slice(1)) {
            const n = Number(l);
            if (Number.isSafeInteger(n) && n >= 0) done.add(n);
          }
        }
      }
      if (!resumed) {
        await fsp.writeFile(file, JSON.stringify(header) + '\n');
      }
      const fh = await fsp.open(file, 'a');
      await fh.datasync();
      return { journal: new FetchJournal(fh, file), done, resumed };
    } catch (err) {
      throw withContext(err, `opening the download journal ${file}`, 'IO_ERROR');
    }
  }

  /** Records chunk indexes as written; they reach the disk at the next `commit`. */
  add(indexes: readonly number[]): void {
    for (const i of indexes) this.buffered.push(i);
  }

  get pending(): number {
    return this.buffered.length;
  }

  /** Call after the partial file was fdatasync'ed: persists the buffered indexes. */
  async commit(): Promise<void> {
    if (this.buffered.length === 0) return;
    const text = this.buffered.join('\n') + '\n';
    this.buffered = [];
    await this.fh.write(text);
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
