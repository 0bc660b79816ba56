/**
 * A worker thread with its own read-only connection to the fleet's SQLite file. The fleet's
 * aggregate queries (version histograms over every device, participation counts of a rollout)
 * scan tens of thousands of rows: run on the main thread they would stall every check-in for
 * tens of milliseconds. WAL lets this reader see each committed transaction without blocking
 * the writer.
 *
 * It also checkpoints the WAL (a second, read-write connection, PASSIVE every `checkpointMs`):
 * a checkpoint copies pages into the database file and fsyncs it, which on a busy disk took
 * 100-270 ms and, run by the writer's automatic checkpoint, stalled every check-in in flight.
 * PASSIVE never blocks the writer; the main connection turns its automatic checkpoint off.
 */
import Database from 'better-sqlite3';
import { parentPort, workerData } from 'node:worker_threads';

interface Request {
  id: number;
  sql: string;
  params: unknown[];
}

const { file, checkpointMs } = workerData as { file: string; checkpointMs?: number };
const db = new Database(file, { readonly: true, fileMustExist: true });
db.pragma('busy_timeout = 5000');

if (checkpointMs && checkpointMs > 0) {
  const writer = new Database(file, { fileMustExist: true });
  setInterval(() => {
    try {
      writer.pragma('wal_checkpoint(PASSIVE)');
    } catch {
      // busy or closing: the next round catches up
    }
  }, checkpointMs);
}
const cache = new Map<string, Database.Statement>();

parentPort!.on('message', (m: Request) => {
  try {
    let st = cache.get(m.sql);
    if (!st) {
      st = db.prepare(m.sql);
      cache.set(m.sql, st);
    }
    parentPort!.postMessage({ id: m.id, rows: st.all(...m.params) });
  } catch (err) {
    parentPort!.postMessage({ id: m.id, error: (err as Error).message });
  }
});
