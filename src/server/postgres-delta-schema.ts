import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import pg from 'pg';
import { IbuError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';

/** Advisory lock key of schema creation (the fleet uses 7141–7144, admission 7146). */
const SCHEMA_LOCK = 7145;

// BIGINT (oid 20) as a number: times in ms and sizes stay far below 2^53.
export const pgTypes = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

const SCHEMA = `
CREATE TABLE IF NOT EXISTS delta_jobs (
  seq BIGSERIAL NOT NULL,
  scope TEXT NOT NULL,
  from_version TEXT NOT NULL,
  to_version TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('queued', 'building', 'ready', 'failed')),
  priority INTEGER NOT NULL DEFAULT 0,
  requested_at BIGINT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at BIGINT NOT NULL DEFAULT 0,
  started_at BIGINT,
  finished_at BIGINT,
  last_error TEXT,
  size BIGINT,
  sha256 TEXT,
  last_access_at BIGINT,
  builds INTEGER NOT NULL DEFAULT 0,
  client TEXT,
  claimed_by TEXT,
  lease_until BIGINT,
  PRIMARY KEY (scope, from_version, to_version)
);
CREATE INDEX IF NOT EXISTS delta_jobs_queue ON delta_jobs (scope, state, priority, requested_at, seq);
CREATE INDEX IF NOT EXISTS delta_jobs_lru ON delta_jobs (scope, state, last_access_at);
CREATE INDEX IF NOT EXISTS delta_jobs_client ON delta_jobs (scope, client, state);
CREATE TABLE IF NOT EXISTS delta_demand (
  from_version TEXT NOT NULL,
  to_version TEXT NOT NULL,
  noted_at BIGINT NOT NULL,
  PRIMARY KEY (from_version, to_version)
);
`;

/**
 * Creates the delta queue's tables and reads the id of the delta directory `dir` (writing one when
 * it has none), all under an advisory lock: replicas may start together on a fresh shared
 * directory. Returns the id: the scope of every row this process reads and writes.
 */
export async function openDeltaSchema(url: string, dir: string): Promise<string> {
  const setup = new pg.Client({ connectionString: url });
  try {
    await setup.connect();
    await setup.query('BEGIN');
    await setup.query('SELECT pg_advisory_xact_lock($1)', [SCHEMA_LOCK]);
    await setup.query(SCHEMA);
    const scope = await directoryId(dir);
    await setup.query('COMMIT');
    return scope;
  } catch (err) {
    throw new IbuError(
      'STORE_UNAVAILABLE',
      `Cannot use the PostgreSQL delta queue: ${(err as Error).message}. Check --database-url, that the server is running and that ${dir} is writable.`,
      { cause: err },
    );
  } finally {
    await setup.end().catch(() => {});
  }
}

/** The id in `<dir>/.ibu-delta-dir`, written (fsynced, renamed) when missing. */
async function directoryId(dir: string): Promise<string> {
  const file = path.join(dir, '.ibu-delta-dir');
  const known = (await fsp.readFile(file, 'utf8').catch(() => '')).trim();
  if (known) return known;
  await fsp.mkdir(dir, { recursive: true });
  const id = randomBytes(16).toString('hex');
  await writeFileAtomic(file, `${id}\n`);
  return id;
}
