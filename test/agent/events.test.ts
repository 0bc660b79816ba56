/**
 * The agent's event queue against a real HTTP server on loopback (node:http standing in for the
 * fleet's events route, answering what the test scripts): events go in order, a transient failure
 * keeps the event and all after it, an event the server refuses for good is dropped and does not
 * hold the rest back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { flushEvents, queueEvent } from '../../src/agent/events.js';
import { JournalFile, readJournal } from '../../src/agent/journal.js';
import { ServerClient } from '../../src/agent/server-client.js';

async function withServer(answer: (body: { type: string; fromVersion: string }) => number, fn: (url: string, seen: string[]) => Promise<void>): Promise<void> {
  const seen: string[] = [];
  const srv = http.createServer((req, res) => {
    let text = '';
    req.on('data', (d: Buffer) => (text += d.toString()));
    req.on('end', () => {
      const body = JSON.parse(text) as { type: string; fromVersion: string };
      const status = answer(body);
      seen.push(`${body.type}:${status}`);
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(status === 200 ? '{"ok":true}' : JSON.stringify({ error: { code: status === 400 ? 'BAD_REQUEST' : 'INTERNAL', message: `answered ${status}` } }));
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  try {
    await fn(`http://127.0.0.1:${(srv.address() as { port: number }).port}`, seen);
  } finally {
    await new Promise<void>((r) => srv.close(() => r()));
  }
}

async function journalWith(events: [string, string][]): Promise<JournalFile> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ibu-events-'));
  const jf = new JournalFile(dir);
  for (const [type, from] of events) queueEvent(jf, new Date(0), type as never, from, '2.0');
  await jf.save();
  return jf;
}

test('an event the server refuses for good (400) is dropped; the events after it are delivered', async () => {
  const jf = await journalWith([
    ['apply-started', 'unknown'],
    ['upgrade-succeeded', '1.0'],
  ]);
  const lines: string[] = [];
  await withServer(
    (b) => (b.fromVersion === 'unknown' ? 400 : 200),
    async (url, seen) => {
      await flushEvents(jf, new ServerClient(url, 'dev-1', 'token'), (l) => lines.push(l));
      assert.deepEqual(seen, ['apply-started:400', 'upgrade-succeeded:200']);
    },
  );
  assert.equal(jf.j.pendingEvents.length, 0);
  assert.equal((await readJournal(jf.imagesDir)).journal.pendingEvents.length, 0, 'the journal on disk says so too');
  assert.match(lines.join('\n'), /dropped the apply-started event .*refuses it for good/);
});

test('a transient failure (503) keeps that event and every one after it, in order, for the next run', async () => {
  const jf = await journalWith([
    ['apply-started', '1.0'],
    ['upgrade-succeeded', '1.0'],
  ]);
  let down = true;
  await withServer(
    () => (down ? 503 : 200),
    async (url, seen) => {
      const client = new ServerClient(url, 'dev-1', 'token');
      await flushEvents(jf, client, () => {});
      assert.deepEqual(seen, ['apply-started:503'], 'nothing after the failed one is sent out of order');
      assert.deepEqual(
        (await readJournal(jf.imagesDir)).journal.pendingEvents.map((e) => e.type),
        ['apply-started', 'upgrade-succeeded'],
      );
      down = false;
      await flushEvents(jf, client, () => {});
      assert.deepEqual(seen.slice(1), ['apply-started:200', 'upgrade-succeeded:200']);
    },
  );
  assert.equal(jf.j.pendingEvents.length, 0);
});
