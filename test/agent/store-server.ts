import { createServer, type IbuServer } from '../../src/server/app.js';
import type { Device } from './device.js';

/**
 * The real `ibu serve` app over a test device's store, in-process and not yet listening: one
 * delta worker, Retry-After 1 s, no precompute, no log; admin token 'admin-token', enrollment
 * secret 'enroll-me' (set in the environment until `close()`, which also stops the app).
 */
export async function storeServer(dev: Device): Promise<{ srv: IbuServer; close(): Promise<void> }> {
  const secretBefore = process.env.IBU_ENROLLMENT_SECRET;
  process.env.IBU_ENROLLMENT_SECRET = 'enroll-me';
  const srv = await createServer({
    dataDir: dev.storeDir,
    adminToken: 'admin-token',
    workers: 1,
    retryAfterSeconds: 1,
    precompute: 0,
    rescanIntervalMs: 0,
    logger: false,
  });
  return {
    srv,
    async close() {
      await srv.app.close();
      if (secretBefore === undefined) delete process.env.IBU_ENROLLMENT_SECRET;
      else process.env.IBU_ENROLLMENT_SECRET = secretBefore;
    },
  };
}
