import * as fs from 'node:fs';

/** Positional reads and writes that finish the job: fs.readSync/writeSync may move fewer bytes than asked. */

/** Fills `buf` from byte `pos` of `fd`; `short(at)` is the error to throw when the file ends at byte `at` first. */
export function preadFull(fd: number, buf: Buffer, pos: number, short: (at: number) => Error): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) throw short(pos + done);
    done += n;
  }
}

export function pwriteFull(fd: number, buf: Buffer, pos: number): void {
  for (let off = 0; off < buf.length;) off += fs.writeSync(fd, buf, off, buf.length - off, pos + off);
}
