import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MiB, peakRss } from '../helpers/peak-rss.js';

// Issue #15 item 2: a server on 127.0.0.1 answering a 2 KiB chunk with 512 MiB is cut off at
// what the manifest allows, with or without a Content-Length, and memory stays bounded.
for (const withLength of [false, true]) {
  test(`a 512 MiB body for a 2 KiB chunk (${withLength ? 'Content-Length' : 'chunked'}) is CHUNK_INVALID, peak RSS under 160 MiB`, () => {
    const { result, maxRssBytes } = peakRss<{ code: string; message: string }>(`
      const http = await import('node:http');
      const { HttpStore } = await import(dist + '/src/store/http-store.js');
      const { VerifyingStore } = await import(dist + '/src/store/verifying-store.js');
      const block = Buffer.alloc(1 << 20);
      const srv = http.createServer((req, res) => {
        res.writeHead(200, ${withLength} ? { 'content-length': String(512 * block.length) } : {});
        let left = 512;
        const pump = () => { while (left > 0) { left--; if (!res.write(block)) return void res.once('drain', pump); } res.end(); };
        res.on('error', () => {});
        pump();
      });
      await new Promise((r) => srv.listen(0, '127.0.0.1', r));
      const store = new HttpStore('http://127.0.0.1:' + srv.address().port, { attempts: 1 });
      try {
        await new VerifyingStore(store, 'blake3').getChunkData('ab'.repeat(32), 2048);
        result = { code: 'OK', message: '' };
      } finally {
        await store.close();
        srv.closeAllConnections();
        srv.close();
      }`);
    assert.equal(result.code, 'CHUNK_INVALID', result.message);
    assert.ok(maxRssBytes < 160 * MiB, `peak RSS ${(maxRssBytes / MiB).toFixed(0)} MiB`);
  });
}
