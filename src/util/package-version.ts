import { readFileSync } from 'node:fs';

/** ibu's own version, read once from package.json (dist/src/util → three levels up, src/util → two). */
function read(): string {
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'ibu' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // not at this level; try the next
    }
  }
  return '0.0.0-unknown';
}

export const IBU_VERSION: string = read();
