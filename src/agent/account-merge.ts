import * as path from 'node:path';

/**
 * Merges colon-separated account files (passwd, group, shadow, gshadow, subuid) keyed by the
 * first field, so accounts added on either side survive:
 *  - entries only in the new image (new system users) are kept, in the new image's order;
 *  - entries only on the running system (local users) are appended;
 *  - entries on both sides keep the running system's line (its password hash, shell, home),
 *    except the member list of group/gshadow lines, which is the union of both.
 * Returns the merged text and the conflicts worth reporting (same id, different names).
 */
export function mergeAccountFile(oldText: string, newText: string, kind: string): { text: string; added: string[]; conflicts: string[] } {
  const parse = (t: string): Array<[string, string]> =>
    t
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.startsWith('#'))
      .map((l) => [l.slice(0, l.indexOf(':') < 0 ? l.length : l.indexOf(':')), l]);
  const oldEntries = parse(oldText);
  const newEntries = parse(newText);
  const oldMap = new Map(oldEntries);
  const newNames = new Set(newEntries.map(([n]) => n));
  const isGroup = kind === 'group' || kind === 'gshadow';
  const memberField = kind === 'group' ? 3 : kind === 'gshadow' ? 3 : -1;
  const out: string[] = [];
  for (const [name, line] of newEntries) {
    const old = oldMap.get(name);
    if (old === undefined) {
      out.push(line);
      continue;
    }
    if (isGroup && memberField >= 0) {
      const o = old.split(':');
      const n = line.split(':');
      const members = new Set([...(o[memberField] ?? '').split(','), ...(n[memberField] ?? '').split(',')].filter(Boolean));
      while (o.length <= memberField) o.push('');
      o[memberField] = [...members].join(',');
      out.push(o.join(':'));
    } else {
      out.push(old);
    }
  }
  const added: string[] = [];
  for (const [name, line] of oldEntries) {
    if (newNames.has(name)) continue;
    out.push(line);
    added.push(name);
  }
  // uid/gid collisions between a local account and a new system account: reported, not renumbered.
  const conflicts: string[] = [];
  if (kind === 'passwd' || kind === 'group') {
    const byId = new Map<string, string>();
    for (const l of out) {
      const f = l.split(':');
      const id = f[2];
      if (id === undefined) continue;
      const prev = byId.get(id);
      if (prev !== undefined && prev !== f[0]) conflicts.push(`${kind} id ${id} is used by both ${prev} and ${f[0]}`);
      else byId.set(id, f[0]!);
    }
  }
  return { text: out.join('\n') + '\n', added, conflicts };
}

/** The file kind a merge rule applies to, from its basename. */
export function accountKind(p: string): string | null {
  const b = path.basename(p).replace(/-$/, '');
  return ['passwd', 'group', 'shadow', 'gshadow', 'subuid', 'subgid'].includes(b) ? b : null;
}
