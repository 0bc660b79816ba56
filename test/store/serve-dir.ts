import { createServer, type Server } from 'node:http';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';

export interface ServeOptions {
  /** 'static': files under the dir as-is; 'api': the `ibu serve` /v1 routes mapped onto the same dir. */
  layout?: 'static' | 'api';
  /** Answer the first N requests with 503 (tests retries). */
  fail503?: number;
  /** Delay each chunk response by this many ms (tests resume after kill). */
  chunkDelayMs?: number;
}

/** A real HTTP server on 127.0.0.1, port 0, serving a store directory. */
export async function serveDir(
  root: string,
  opts: ServeOptions = {},
): Promise<{ url: string; server: Server; requests: string[]; close: () => Promise<void> }> {
  const requests: string[] = [];
  let failLeft = opts.fail503 ?? 0;
  const server = createServer((req, res) => {
    void (async () => {
      const url = decodeURIComponent((req.url ?? '/').split('?')[0]!);
      requests.push(`${req.method} ${url}`);
      if (failLeft > 0) {
        failLeft--;
        res.writeHead(503, { 'retry-after': '0' }).end('busy');
        return;
      }
      let rel = url.replace(/^\/+/, '');
      if (opts.layout === 'api') {
        let m: RegExpExecArray | null;
        if ((m = /^v1\/chunks\/([0-9a-f]{64})$/.exec(rel))) rel = `chunks/${m[1]!.slice(0, 4)}/${m[1]}.zst`;
        else if ((m = /^v1\/releases\/([^/]+)\/manifest$/.exec(rel))) rel = `releases/${m[1]}/manifest.json`;
        else if ((m = /^v1\/channels\/([^/]+)\/releases$/.exec(rel))) rel = `channels/${m[1]}.json`;
        else rel = '\0';
      }
      const file = path.join(root, rel);
      if (rel.includes('\0') || !file.startsWith(root + path.sep)) {
        res.writeHead(400).end();
        return;
      }
      if (opts.chunkDelayMs && rel.startsWith('chunks/')) await new Promise((r) => setTimeout(r, opts.chunkDelayMs));
      try {
        const data = await fsp.readFile(file);
        res.writeHead(200, { 'content-length': data.length, 'content-type': 'application/octet-stream' });
        res.end(req.method === 'HEAD' ? undefined : data);
      } catch {
        res.writeHead(404).end();
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
