import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFactorySecrets } from '../../src/fleet/factory-secrets.js';
import { isIbuError } from '../../src/errors.js';

const H = 'AB'.repeat(32);

test('the factory-secret list: ids and sha256 hashes, comments and separators, each id once', () => {
  assert.deepEqual(parseFactorySecrets(`# vendor list\n\nbox-1 ${H}\nbox-2,${'cd'.repeat(32)}  # second\n`), [
    { id: 'box-1', secretHash: 'ab'.repeat(32) },
    { id: 'box-2', secretHash: 'cd'.repeat(32) },
  ]);
  for (const bad of [`box-1`, `box-1 secret`, `../x ${H}`, `box-1 ${H} extra`, `box-1 ${H}\nbox-1 ${H}`]) {
    assert.throws(
      () => parseFactorySecrets(bad),
      (e) => isIbuError(e, 'USAGE'),
      bad,
    );
  }
});
