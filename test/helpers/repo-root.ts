import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The ibu checkout this file is in, from test/ (tsx) or dist/test/ (compiled) alike. */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'assets'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the ibu checkout above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}
