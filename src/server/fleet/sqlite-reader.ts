/**
 * A worker thread with its own read-only connection to the fleet's SQLite file. The fleet's
 * aggregate queries (version histograms over every device, participation counts of a rollout)
 * scan tens of thousands of rows: run on the main thread they would stall every check-in for
 * tens of milliseconds. WAL lets this reader see each committed transaction without blocking
 * the writer.
 */
import Database from 'better-sqlite3';
import { parentPort, workerData } from 'node:worker_threads';

interface Request {
  id: number;
  sql: string;
  params: unknown[];
}

const db = new Database((workerData as { file: string }).file, { readonly: true, fileMustExist: true });
db.pragma('busy_timeout = 5000');
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
