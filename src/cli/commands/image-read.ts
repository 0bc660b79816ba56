import type { Command } from 'commander';
import { IbuError } from '../../errors.js';
import { Ext4Reader, type Ext4Entry } from '../../image/ext4/index.js';
import { diffImageFiles } from '../../image/diff.js';

const CAT_CHUNK = 1 << 20;

/** `ibu image ls|cat|diff`: read images without mounting them. */
export function registerImageRead(image: Command): void {
  image
    .command('ls')
    .description('list a directory (or one entry) inside an image, without mounting it')
    .argument('<image>', 'ext4 image file')
    .argument('[path]', 'path inside the image', '/')
    .option('-R, --recursive', 'list the whole tree below the path')
    .option('--json', 'print a JSON array of entries (path, type, size, mode, uid, gid, mtime, ino, nlink, target)')
    .action((img: string, p: string, opts: { recursive?: boolean; json?: boolean }) => {
      const r = Ext4Reader.open(img);
      try {
        const top = r.stat(p);
        let entries: Ext4Entry[];
        if (top.type !== 'dir') entries = [top];
        else if (opts.recursive) entries = [...r.walk(top.path)].slice(1);
        else entries = r.list(top.path);
        if (opts.json) writeJsonArray(entries);
        else process.stdout.write(entries.map(formatLong).join(''));
      } finally {
        r.close();
      }
    });

  image
    .command('cat')
    .description("write a file's bytes from inside an image to stdout")
    .argument('<image>', 'ext4 image file')
    .argument('<path>', 'file inside the image (symlinks are followed)')
    .action(async (img: string, p: string) => {
      const r = Ext4Reader.open(img);
      try {
        await catFile(r, p, process.stdout);
      } finally {
        r.close();
      }
    });

  image
    .command('diff')
    .description('what an upgrade from OLD to NEW changes: added, removed and changed paths')
    .argument('<old>', 'the image the device runs now')
    .argument('<new>', 'the image it upgrades to')
    .option('--json', 'print {added, removed, changed, details} as JSON')
    .action((a: string, b: string, opts: { json?: boolean }) => {
      const d = diffImageFiles(a, b);
      if (opts.json) {
        process.stdout.write(JSON.stringify(d) + '\n');
        return;
      }
      const why = new Map(d.details.map((x) => [x.path, x.changes.join(',')]));
      const lines = [
        ...d.added.map((p) => ({ p, line: `A ${p}` })),
        ...d.removed.map((p) => ({ p, line: `D ${p}` })),
        ...d.changed.map((p) => ({ p, line: `M ${p} (${why.get(p)})` })),
      ].sort((x, y) => (x.p < y.p ? -1 : x.p > y.p ? 1 : 0));
      process.stdout.write(lines.map((l) => l.line + '\n').join(''));
      process.stdout.write(`${d.added.length} added, ${d.removed.length} removed, ${d.changed.length} changed\n`);
    });
}

/** Streams a file in 1 MiB pieces; a reader that goes away (EPIPE, e.g. `| head`) ends it quietly. */
async function catFile(r: Ext4Reader, p: string, out: NodeJS.WriteStream): Promise<void> {
  let gone = false;
  const onError = (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') gone = true;
  };
  out.on('error', onError);
  try {
    for (let off = 0; !gone; off += CAT_CHUNK) {
      const chunk = r.readRange(p, off, CAT_CHUNK);
      if (chunk.length === 0) break;
      await new Promise<void>((resolve, reject) => {
        out.write(chunk, (err) => {
          if (!err) resolve();
          else if ((err as NodeJS.ErrnoException).code === 'EPIPE') {
            gone = true;
            resolve();
          } else reject(new IbuError('IO_ERROR', `Writing to stdout failed: ${err.message}.`, { cause: err }));
        });
      });
      if (chunk.length < CAT_CHUNK) break;
    }
  } finally {
    out.off('error', onError);
  }
}

function writeJsonArray(entries: Ext4Entry[]): void {
  const parts = entries.map((e) => JSON.stringify(e));
  process.stdout.write(parts.length === 0 ? '[]\n' : `[\n${parts.join(',\n')}\n]\n`);
}

const TYPE_CHAR: Record<string, string> = { file: '-', dir: 'd', symlink: 'l', chardev: 'c', blockdev: 'b', fifo: 'p', socket: 's', unknown: '?' };

/** One `ls -l`-style line: mode, links, owner, group, size (or major, minor), mtime, path. */
function formatLong(e: Ext4Entry): string {
  const size = e.rdev ? `${e.rdev.major}, ${e.rdev.minor}` : String(e.size);
  const when = new Date(e.mtime * 1000).toISOString().slice(0, 16).replace('T', ' ');
  const target = e.type === 'symlink' ? ` -> ${e.target}` : '';
  const owner = `${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)}`;
  return `${TYPE_CHAR[e.type]}${permString(e.mode)} ${String(e.nlink).padStart(3)} ${owner} ${size.padStart(10)} ${when} ${e.path}${target}\n`;
}

function permString(mode: number): string {
  const bits = 'rwxrwxrwx';
  let s = '';
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? bits[i] : '-';
  const set = (i: number, flag: number, on: string, off: string) => {
    if (mode & flag) s = s.slice(0, i) + (s[i] === '-' ? off : on) + s.slice(i + 1);
  };
  set(2, 0o4000, 's', 'S');
  set(5, 0o2000, 's', 'S');
  set(8, 0o1000, 't', 'T');
  return s;
}
