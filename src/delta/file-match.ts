/**
 * Which source file a changed target file is diffed against. In order: the same path; the
 * same path with every run of digits treated as equal (a version inside a path:
 * /usr/lib/modules/6.1.0-26-amd64/... → 6.1.0-28-amd64, libfoo.so.1.2.3 → libfoo.so.1.2.4);
 * the same file name elsewhere; the same file name up to digits. Among several candidates the
 * one closest in size wins (then the last in path order, usually the newest version).
 */
export interface MatchFile {
  path: string;
  ino: number;
  type: 'file' | 'dir';
  size: number;
}

export type MatchKind = 'path' | 'rename' | 'basename';

export interface Match {
  file: MatchFile;
  kind: MatchKind;
}

export function normaliseDigits(p: string): string {
  return p.replace(/[0-9]+/g, '#');
}

function basename(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}

function push(map: Map<string, MatchFile[]>, key: string, f: MatchFile): void {
  const list = map.get(key);
  if (list) list.push(f);
  else map.set(key, [f]);
}

export class SourceMatcher {
  private readonly byPath = new Map<string, MatchFile>();
  private readonly byNormPath = new Map<string, MatchFile[]>();
  private readonly byBase = new Map<string, MatchFile[]>();
  private readonly byNormBase = new Map<string, MatchFile[]>();

  constructor(files: Iterable<MatchFile>) {
    for (const f of files) {
      this.byPath.set(f.path, f);
      if (f.size === 0) continue; // nothing to diff against
      push(this.byNormPath, `${f.type}:${normaliseDigits(f.path)}`, f);
      if (f.type !== 'file') continue;
      push(this.byBase, basename(f.path), f);
      push(this.byNormBase, normaliseDigits(basename(f.path)), f);
    }
  }

  match(t: MatchFile): Match | undefined {
    const same = this.byPath.get(t.path);
    if (same && same.type === t.type && same.size > 0) return { file: same, kind: 'path' };
    const renamed = closest(this.byNormPath.get(`${t.type}:${normaliseDigits(t.path)}`), t);
    if (renamed) return { file: renamed, kind: 'rename' };
    if (t.type !== 'file') return undefined;
    const base = closest(this.byBase.get(basename(t.path)), t) ?? closest(this.byNormBase.get(normaliseDigits(basename(t.path))), t);
    if (base) return { file: base, kind: 'basename' };
    return undefined;
  }
}

function closest(list: MatchFile[] | undefined, t: MatchFile): MatchFile | undefined {
  if (!list) return undefined;
  let best: MatchFile | undefined;
  for (const f of list) {
    if (f.type !== t.type) continue;
    if (!best) {
      best = f;
      continue;
    }
    const d = Math.abs(f.size - t.size);
    const bd = Math.abs(best.size - t.size);
    if (d < bd || (d === bd && f.path > best.path)) best = f;
  }
  return best;
}
