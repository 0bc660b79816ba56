// Lists what upgradectl loads at run time: the compiled files reachable from its entry point
// (static imports, literal dynamic imports, worker files named by `new URL('./x.js', import.meta.url)`)
// and the npm packages they import. The .deb ships exactly these, so server-only code and its
// dependencies (fastify, pg, better-sqlite3, ...) stay out of the device.
//   node runtime-files.mjs DIST_ENTRY   -> JSON { files: [paths relative to the dist root], packages: [...] }
import { readFileSync } from 'node:fs';
import path from 'node:path';

const entry = path.resolve(process.argv[2]);
const root = path.resolve(path.dirname(entry), '../../..'); // dist/src/cli/x.js -> the checkout
const files = new Set();
const packages = new Set();
const refs = [
  /(?:^|[\s;}])(?:import|export)\s[^'"]*?\sfrom\s*['"]([^'"]+)['"]/gm,
  /(?:^|[\s;}])import\s*['"]([^'"]+)['"]/gm,
  /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
  /new URL\(\s*['"](\.[^'"]+\.js)['"]\s*,\s*import\.meta\.url\s*\)/g,
];

function walk(file) {
  if (files.has(file)) return;
  files.add(file);
  const text = readFileSync(file, 'utf8');
  for (const re of refs) {
    for (const m of text.matchAll(re)) {
      const spec = m[1];
      if (spec.startsWith('node:')) continue;
      if (spec.startsWith('.')) walk(path.resolve(path.dirname(file), spec));
      // a worker started from source under tsx only (never in dist): not a runtime dependency
      else if (spec !== 'tsx/esm/api') packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]);
    }
  }
}

walk(entry);
process.stdout.write(JSON.stringify({ files: [...files].map((f) => path.relative(root, f)).sort(), packages: [...packages].sort() }, null, 1) + '\n');
