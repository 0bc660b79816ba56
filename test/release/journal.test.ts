import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { FetchJournal } from '../../src/release/journal.js';
import { tmpDir } from './helpers.js';

const H = { format: 1 as const, manifestSha256: 'a'.repeat(64), imageSize: 1000 };

test('the journal keeps committed indexes, ignores a torn last line, and restarts for another manifest', async () => {
  const t = tmpDir('journal');
  try {
    const f = path.join(t.dir, 'x.partial.journal');
    let j = await FetchJournal.open(f, H);
    assert.equal(j.resumed, false);
    j.journal.add([3, 1]);
    j.journal.add([7]);
    assert.equal(j.journal.pending, 3);
    await j.journal.commit();
    j.journal.add([9]); // never committed: lost on a crash, refetched
    await j.journal.close();
    appendFileSync(f, '12'); // a torn write
    j = await FetchJournal.open(f, H);
    assert.equal(j.resumed, true);
    assert.deepEqual(
      [...j.done].sort((a, b) => a - b),
      [1, 3, 7],
    );
    await j.journal.close();
    j = await FetchJournal.open(f, { ...H, manifestSha256: 'b'.repeat(64) });
    assert.equal(j.resumed, false);
    assert.equal(j.done.size, 0);
    await j.journal.close();
    assert.equal(readFileSync(f, 'utf8').trim().split('\n').length, 1);
  } finally {
    t.cleanup();
  }
});
