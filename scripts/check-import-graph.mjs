#!/usr/bin/env node
// The import graph of src/: no cycle between files or between folders, and every import between
// folders goes down DESIGN.md's floors. Run by `npm run lint`; prints each problem and exits 1.
// Type-only imports count (eslint's import-x/no-cycle skips them): a type-only import that closes
// a cycle still ties the two modules together for the reader.
// Usage: node scripts/check-import-graph.mjs [src]
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

// Floors, lowest first. A folder imports only folders on lower floors (the ground floor's two
// members may import each other as long as that makes no cycle). server and agent share a floor
// and never import each other: they are two consumers of the same library.
export const FLOORS = [
  ['(root)', 'util'],
  ['image'],
  ['chunk'],
  ['store'],
  ['release'],
  ['delta'],
  ['zfs'],
  ['boot'],
  ['build'],
  ['fleet'],
  ['server', 'agent'],
  ['cli'],
];
const GROUND = 0;

/** Relative imports of every .ts file under root, type-only and dynamic ones included. */
export function importGraph(root) {
  const files = [];
  (function walk(dir) {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) files.push(p);
    }
  })(root);
  const edges = new Map();
  for (const f of files) {
    const out = new Set();
    for (const { fileName } of ts.preProcessFile(fs.readFileSync(f, 'utf8'), true, true).importedFiles) {
      if (!fileName.startsWith('.')) continue;
      let t = path.join(path.dirname(f), fileName).replace(/\.js$/, '.ts');
      if (!t.endsWith('.ts')) t = fs.existsSync(t + '.ts') ? t + '.ts' : path.join(t, 'index.ts');
      if (fs.existsSync(t)) out.add(t);
    }
    edges.set(f, out);
  }
  return edges;
}

/** Every cycle a depth-first walk meets, as "a -> b -> a". */
export function cycles(graph) {
  const state = new Map();
  const stack = [];
  const found = [];
  const visit = (n) => {
    state.set(n, 'open');
    stack.push(n);
    for (const m of graph.get(n) ?? []) {
      if (state.get(m) === 'open') found.push([...stack.slice(stack.indexOf(m)), m].join(' -> '));
      else if (!state.has(m)) visit(m);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of graph.keys()) if (!state.has(n)) visit(n);
  return found;
}

/** Problems of the graph: file cycles, folder cycles, imports against the floors. */
export function problems(root, edges) {
  const folderOf = (f) => {
    const parts = path.relative(root, f).split(path.sep);
    return parts.length > 1 ? parts[0] : '(root)';
  };
  const floorOf = (folder) => FLOORS.findIndex((floor) => floor.includes(folder));
  const out = cycles(edges).map((c) => `file cycle: ${c}`);
  const folders = new Map();
  const seen = new Set();
  for (const [f, targets] of edges) {
    const a = folderOf(f);
    if (floorOf(a) < 0 && !seen.has(a)) {
      seen.add(a);
      out.push(`src/${a}/ is on no floor: add it to FLOORS in scripts/check-import-graph.mjs (and to DESIGN.md's table)`);
    }
    for (const t of targets) {
      const b = folderOf(t);
      if (a === b) continue;
      if (!folders.has(a)) folders.set(a, new Set());
      folders.get(a).add(b);
      const fa = floorOf(a);
      const fb = floorOf(b);
      if (fa < 0 || fb < 0 || fb < fa || (fa === GROUND && fb === GROUND)) continue;
      out.push(`${f} imports ${t}: ${a} (floor ${fa}) may import only lower floors, and ${b} is on floor ${fb}; move the shared code down`);
    }
  }
  out.push(...cycles(folders).map((c) => `folder cycle: ${c}`));
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const root = process.argv[2] ?? 'src';
  const found = problems(root, importGraph(root));
  for (const p of found) console.error(`check-import-graph: ${p}`);
  process.exit(found.length ? 1 : 0);
}
