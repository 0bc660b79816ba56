import { execFile } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { createServer as netServer } from 'node:net';
import * as path from 'node:path';
import { repoRoot } from './repo-root.js';
import { promisify } from 'node:util';

const script = path.join(repoRoot(), 'scripts/nginx-cdn.sh');

/** A port nobody listens on right now (for a server that must be told its port up front). */
export async function freePort(): Promise<number> {
  const s = netServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * nginx as a caching proxy (assets/nginx/ibu-cdn.conf via scripts/nginx-cdn.sh) in `dir`, in front
 * of `upstreams` (HOST:PORT or http://HOST:PORT); workers run as root so the cache may sit in a
 * private temp directory. Needs root (the script installs nginx when missing).
 */
export async function startCdn(dir: string, upstreams: string[]): Promise<{ origin: string; stop(): Promise<void> }> {
  const listen = `127.0.0.1:${await freePort()}`;
  const env = { ...process.env, IBU_CDN_USER: 'root' };
  const ups = upstreams.map((u) => u.replace(/^https?:\/\//, ''));
  const { stdout } = await promisify(execFile)('bash', [script, 'start', dir, listen, ...ups], { timeout: 120_000, env });
  return {
    origin: stdout.trim(),
    stop: async () => void (await promisify(execFile)('bash', [script, 'stop', dir], { timeout: 60_000, env })),
  };
}
