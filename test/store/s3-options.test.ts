import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseS3Url, s3OptionsFromEnv, s3OptionsToEnv, S3Store, S3_DEFAULT_IN_FLIGHT } from '../../src/store/s3-store.js';
import { inFlightOf } from '../../src/store/store.js';
import { LocalStore } from '../../src/store/local-store.js';

// The S3 settings as the AWS tools read them, plus ibu's own; no server needed (nothing is sent).
test('S3 settings from the environment, and back for child processes', () => {
  const env = { AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:7480', AWS_REGION: 'eu-1', IBU_S3_PATH_STYLE: '1', IBU_S3_IN_FLIGHT: '64' };
  const o = s3OptionsFromEnv(env);
  assert.deepEqual(o, { endpoint: 'http://127.0.0.1:7480', region: 'eu-1', forcePathStyle: true, inFlight: 64 });
  assert.deepEqual(s3OptionsToEnv(o), env);
  assert.deepEqual(parseS3Url('s3://my-bucket/a/b/'), { bucket: 'my-bucket', prefix: 'a/b' });
});

test('requests in flight: S3 keeps 32 unless told, a disk store names none; bad values are USAGE errors', async () => {
  const s3 = new S3Store('s3://bucket/p', { endpoint: 'http://127.0.0.1:9' });
  const tuned = new S3Store('s3://bucket/p', { endpoint: 'http://127.0.0.1:9', inFlight: 100 });
  try {
    assert.equal(inFlightOf(s3), S3_DEFAULT_IN_FLIGHT);
    assert.equal(inFlightOf(tuned), 100);
    assert.equal(inFlightOf(new LocalStore('/nonexistent')), undefined);
  } finally {
    await s3.close();
    await tuned.close();
  }
  for (const bad of ['0', '257', '-1', '8x'])
    assert.throws(() => s3OptionsFromEnv({ IBU_S3_IN_FLIGHT: bad }), { code: 'USAGE', message: /IBU_S3_IN_FLIGHT must be a number of requests from 1 to 256/ });
  assert.deepEqual(s3OptionsFromEnv({ IBU_S3_IN_FLIGHT: '' }), {});
});
