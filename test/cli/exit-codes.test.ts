/**
 * docs/cli.md's exit table against the code: every error code of src/errors.ts is listed, in the
 * row of the exit status src/cli/exit-codes.ts gives it, and the table names no code that is gone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERROR_CODES } from '../../src/errors.js';
import { exitCodeFor } from '../../src/cli/exit-codes.js';

/** code -> exit status, from the rows `| N | meaning | `CODE`, ... |` of docs/cli.md. */
function documentedExits(): Map<string, number> {
  const doc = readFileSync(new URL('../../../docs/cli.md', import.meta.url), 'utf8'); // from dist/test/cli/
  const out = new Map<string, number>();
  for (const row of doc.matchAll(/^\| (\d+) \|[^|]*\|([^|\n]*)\|$/gm)) {
    for (const [, code] of row[2]!.matchAll(/`([A-Z0-9_]+)`/g)) {
      assert.equal(out.has(code!), false, `${code} is listed twice in docs/cli.md`);
      out.set(code!, Number(row[1]));
    }
  }
  return out;
}

test('docs/cli.md lists every error code under the exit status the CLI gives it', () => {
  const documented = documentedExits();
  const missing = ERROR_CODES.filter((c) => !documented.has(c));
  assert.deepEqual(missing, [], 'codes of src/errors.ts missing from the exit table of docs/cli.md');
  const wrong = ERROR_CODES.filter((c) => documented.has(c) && documented.get(c) !== exitCodeFor(c)).map(
    (c) => `${c}: docs ${documented.get(c)}, code ${exitCodeFor(c)}`,
  );
  assert.deepEqual(wrong, [], 'docs/cli.md gives these codes another exit status than src/cli/exit-codes.ts');
  const stale = [...documented.keys()].filter((c) => !(ERROR_CODES as readonly string[]).includes(c));
  assert.deepEqual(stale, [], 'docs/cli.md lists codes that src/errors.ts no longer has');
});
