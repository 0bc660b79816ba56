/**
 * The three-way merge of /etc on upgrade (issue #22), as a pure plan: no I/O here.
 *
 * Facts: three trees of /etc, keyed by the path below /etc ('passwd', 'ssh/sshd_config'):
 *   old    the running image's defaults (its read-only, verified /etc: the overlay's lower dir)
 *   new    the new image's defaults
 *   device what the device has now (the merged overlay view), read at apply, not at prepare,
 *          so an edit made between the two is merged like any other
 * For each path, like OSTree and dpkg conffiles:
 *   device == old            → the new default (the device never touched it)
 *   new == old               → the device's entry (only the device changed it)
 *   device == new            → the new default (both made the same change)
 *   otherwise, a conflict    → the rule for the path: device wins, vendor wins, or merge
 *                              (account files, line by line); reported to the server.
 * Nothing is lost silently: an entry of the device that loses (vendor wins, or its parent
 * directory became a file) is saved aside by the executor and named in the conflict; a vendor
 * entry that loses stays readable in the new image.
 */
import { accountKind, mergeAccountFile } from './account-merge.js';

export type EtcEntry =
  | { type: 'file'; hash: string; mode: number; uid: number; gid: number; text?: string }
  | { type: 'dir'; mode: number; uid: number; gid: number }
  | { type: 'symlink'; target: string }
  | { type: 'other'; mode: number; rdev: number };

/** Path below /etc (no leading slash) → entry. */
export type EtcTree = ReadonlyMap<string, EtcEntry>;

export type EtcRuleKind = 'device' | 'vendor' | 'merge';

export interface EtcRule {
  /** A path below /etc; a trailing '*' matches any suffix ('ssh/ssh_host_*'); a trailing '/' a whole directory. */
  path: string;
  rule: EtcRuleKind;
}

/**
 * The rules every device has, after the config's own (first match wins): a device's identity
 * (machine-id, SSH host keys) is never replaced by an image's, and account files are merged so
 * new system users of the new image and local users of the device both survive.
 */
export const DEFAULT_ETC_RULES: readonly EtcRule[] = [
  { path: 'machine-id', rule: 'device' },
  { path: 'ssh/ssh_host_*', rule: 'device' },
  { path: 'passwd', rule: 'merge' },
  { path: 'group', rule: 'merge' },
  { path: 'shadow', rule: 'merge' },
  { path: 'gshadow', rule: 'merge' },
  { path: 'subuid', rule: 'merge' },
  { path: 'subgid', rule: 'merge' },
];

/** Unlisted paths changed on both sides: the device's explicit change wins, the vendor's file stays readable in the image. */
export const DEFAULT_CONFLICT_RULE: EtcRuleKind = 'device';

export type EtcResult =
  /** the new image's entry (or its absence) */
  | { take: 'new' }
  /** the device's entry (or its absence: a deletion the device made) */
  | { take: 'device' }
  /** account file merged from the device's and the new image's lines */
  | { take: 'merged'; text: string };

export interface EtcDecision {
  path: string;
  result: EtcResult;
  /** Why, in a few words (logged and shown by upgradectl). */
  why: string;
  /** Set when both sides changed the path, or a parent's type change forced the result. */
  conflict?: { rule: EtcRuleKind; detail: string };
  /** The device's entry is not kept: the executor saves it aside before it is replaced. */
  saveDevice?: boolean;
}

export interface EtcPlan {
  /** One decision per path present in any tree, sorted (parents before children). */
  decisions: EtcDecision[];
  conflicts: EtcDecision[];
  /** Paths whose result differs from the new default: what a writable layer must hold. */
  deviceLayer: EtcDecision[];
}

export function sameEntry(a: EtcEntry | undefined, b: EtcEntry | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if (a.type !== b.type) return false;
  switch (a.type) {
    case 'file': {
      const o = b as typeof a;
      return a.hash === o.hash && a.mode === o.mode && a.uid === o.uid && a.gid === o.gid;
    }
    case 'dir': {
      const o = b as typeof a;
      return a.mode === o.mode && a.uid === o.uid && a.gid === o.gid;
    }
    case 'symlink':
      return a.target === (b as typeof a).target;
    case 'other': {
      const o = b as typeof a;
      return a.mode === o.mode && a.rdev === o.rdev;
    }
  }
}

export function ruleFor(p: string, rules: readonly EtcRule[]): EtcRuleKind {
  for (const r of [...rules, ...DEFAULT_ETC_RULES]) {
    if (r.path.endsWith('*') ? p.startsWith(r.path.slice(0, -1)) : r.path.endsWith('/') ? p.startsWith(r.path) || `${p}/` === r.path : p === r.path)
      return r.rule;
  }
  return DEFAULT_CONFLICT_RULE;
}

const describe = (e: EtcEntry | undefined): string => (e === undefined ? 'absent' : e.type === 'symlink' ? `symlink → ${e.target}` : e.type);

/** The entry a decision leaves at its path. */
function resultEntry(d: EtcDecision, n: EtcEntry | undefined, dev: EtcEntry | undefined): EtcEntry | undefined {
  return d.result.take === 'device' ? dev : d.result.take === 'new' ? n : (n ?? dev);
}

/** The three-way merge of /etc: a decision for every path (see the top of this file). */
export function planEtcMerge(old: EtcTree, next: EtcTree, device: EtcTree, rules: readonly EtcRule[] = []): EtcPlan {
  const paths = [...new Set([...old.keys(), ...next.keys(), ...device.keys()])].sort(comparePaths);
  const decisions: EtcDecision[] = [];
  const results = new Map<string, EtcEntry | undefined>();
  for (const p of paths) {
    const o = old.get(p);
    const n = next.get(p);
    const d = device.get(p);
    let dec: EtcDecision;
    if (sameEntry(d, o))
      dec = { path: p, result: { take: 'new' }, why: n === undefined ? 'untouched by the device; gone in the new image' : 'untouched by the device' };
    else if (sameEntry(n, o)) dec = { path: p, result: { take: 'device' }, why: d === undefined ? 'deleted on the device' : 'changed on the device only' };
    else if (sameEntry(d, n)) dec = { path: p, result: { take: 'new' }, why: 'the same change on both sides' };
    else dec = conflict(p, o, n, d, ruleFor(p, rules));
    // A parent whose result is not a directory cannot hold this entry: the parent's result
    // wins (it was decided by its own rule) and the device's entry is saved aside.
    const parent = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : null;
    if (parent !== null && results.has(parent) && results.get(parent)?.type !== 'dir' && resultEntry(dec, n, d) !== undefined) {
      const pe = results.get(parent);
      dec =
        d !== undefined && !sameEntry(d, o) && !sameEntry(d, n)
          ? {
              path: p,
              result: { take: 'new' },
              why: `its parent ${parent} is ${describe(pe)} after the merge`,
              conflict: { rule: ruleFor(parent, rules), detail: `parent ${parent} became ${describe(pe)}; the device's ${describe(d)} was saved aside` },
              saveDevice: true,
            }
          : { path: p, result: { take: 'new' }, why: `its parent ${parent} is ${describe(pe)} after the merge` };
    }
    results.set(p, resultEntry(dec, n, d));
    decisions.push(dec);
  }
  const conflicts = decisions.filter((x) => x.conflict);
  const deviceLayer = decisions.filter((x) => x.result.take === 'merged' || (x.result.take === 'device' && !sameEntry(device.get(x.path), next.get(x.path))));
  return { decisions, conflicts, deviceLayer };
}

function conflict(p: string, o: EtcEntry | undefined, n: EtcEntry | undefined, d: EtcEntry | undefined, rule: EtcRuleKind): EtcDecision {
  const sides = `the device's is ${describe(d)}, the new image's is ${describe(n)} (was ${describe(o)})`;
  if (rule === 'merge') {
    const kind = accountKind(p);
    if (kind && d?.type === 'file' && n?.type === 'file' && d.text !== undefined && n.text !== undefined) {
      const m = mergeAccountFile(d.text, n.text, kind);
      const detail = [
        `merged ${kind}: the new image's entries, the device's lines for shared names`,
        m.added.length ? `kept local entries ${m.added.join(', ')}` : '',
        ...m.conflicts,
      ]
        .filter(Boolean)
        .join('; ');
      return { path: p, result: { take: 'merged', text: m.text }, why: 'changed on both sides; merged', conflict: { rule, detail } };
    }
    // Not two account files (a type change, a deletion): nothing to merge line by line; the device's explicit state wins.
    return {
      path: p,
      result: { take: 'device' },
      why: 'changed on both sides; cannot merge, the device wins',
      conflict: { rule, detail: `${sides}; kept the device's` },
    };
  }
  if (rule === 'device')
    return { path: p, result: { take: 'device' }, why: 'changed on both sides; the device wins', conflict: { rule, detail: `${sides}; kept the device's` } };
  return {
    path: p,
    result: { take: 'new' },
    why: 'changed on both sides; the vendor wins',
    conflict: { rule, detail: `${sides}; took the new image's${d !== undefined ? ", the device's was saved aside" : ''}` },
    ...(d !== undefined ? { saveDevice: true } : {}),
  };
}

/** Parents before children: plain string order breaks that ('a-b' < 'a/c'), so compare by path components. */
function comparePaths(a: string, b: string): number {
  const x = a.split('/');
  const y = b.split('/');
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! < y[i]! ? -1 : 1;
  return x.length - y.length;
}
