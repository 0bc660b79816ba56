import Database from 'better-sqlite3';

export type Db = Database.Database;

/**
 * The server's own SQLite file (`<data>/server.sqlite`): the delta job queue, the delta cache
 * index, the pairs devices need and the releases already seen by the precompute scanner. WAL so status reads never wait
 * for a writer; a busy timeout so a second process on the same directory waits instead of failing.
 */
const MIGRATIONS: string[] = [
  `CREATE TABLE delta_jobs (
     from_version TEXT NOT NULL,
     to_version TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('queued', 'building', 'ready', 'failed')),
     priority INTEGER NOT NULL DEFAULT 0,
     requested_at INTEGER NOT NULL,
     attempts INTEGER NOT NULL DEFAULT 0,
     next_attempt_at INTEGER NOT NULL DEFAULT 0,
     started_at INTEGER,
     finished_at INTEGER,
     last_error TEXT,
     size INTEGER,
     sha256 TEXT,
     last_access_at INTEGER,
     builds INTEGER NOT NULL DEFAULT 0,
     PRIMARY KEY (from_version, to_version)
   );
   CREATE INDEX delta_jobs_queue ON delta_jobs (state, priority, requested_at);
   CREATE INDEX delta_jobs_lru ON delta_jobs (state, last_access_at);
   CREATE TABLE known_releases (
     version TEXT NOT NULL,
     channel TEXT NOT NULL,
     seen_at INTEGER NOT NULL,
     PRIMARY KEY (channel, version)
   );
   CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);`,
  // Delta admission (src/server/delta-admission.ts): who queued a job nobody needed, and the
  // pairs enrolled devices were told to upgrade along (their check-ins), kept across restarts.
  `ALTER TABLE delta_jobs ADD COLUMN client TEXT;
   CREATE INDEX delta_jobs_client ON delta_jobs (client, state);
   CREATE TABLE delta_demand (
     from_version TEXT NOT NULL,
     to_version TEXT NOT NULL,
     noted_at INTEGER NOT NULL,
     PRIMARY KEY (from_version, to_version)
   );`,
];

export function openDb(file: string): Db {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return db;
}
