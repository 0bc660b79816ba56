import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pg from 'pg';
import type { FleetRepository } from '../../src/fleet/repository.js';
import { SqliteFleetRepository } from '../../src/fleet/sql/sqlite-repository.js';
import { PostgresFleetRepository } from '../../src/fleet/sql/postgres-repository.js';

/**
 * The fleet's backends for the shared test suites: SQLite in a temp dir, and a real PostgreSQL
 * server (scripts/postgres.sh start) with a fresh database per repository. PostgreSQL is skipped
 * only on a developer machine without IBU_TEST_PG; in CI (CI set) a missing server fails the tests.
 */
export interface Backend {
  name: 'sqlite' | 'postgres';
  skip: string | false;
  /** A fresh, empty repository and a function that removes what it made. */
  make(): Promise<{ repo: FleetRepository; cleanup: () => Promise<void>; url?: string; dir?: string }>;
}

const pgEnv = process.env.IBU_TEST_PG;
export const PG_URL =
  process.env.DATABASE_URL && /^postgres/.test(process.env.DATABASE_URL)
    ? process.env.DATABASE_URL
    : pgEnv && /^postgres/.test(pgEnv)
      ? pgEnv
      : 'postgres://postgres@127.0.0.1:55432/postgres';

export const BACKENDS: Backend[] = [
  {
    name: 'sqlite',
    skip: false,
    async make() {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'ibu-fleet-sqlite-'));
      const repo = new SqliteFleetRepository(path.join(dir, 'fleet.sqlite'));
      return {
        repo,
        dir,
        cleanup: async () => {
          await repo.close().catch(() => {});
          rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  },
  {
    name: 'postgres',
    skip: !pgEnv && !process.env.CI ? 'PostgreSQL tests need IBU_TEST_PG (set by .ci/run; start one with `bash scripts/postgres.sh start`)' : false,
    async make() {
      const db = `ibu_fleet_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
      const admin = new pg.Client({ connectionString: PG_URL });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${db}`);
      await admin.end();
      const u = new URL(PG_URL);
      u.pathname = `/${db}`;
      const url = u.toString();
      const repo = new PostgresFleetRepository(url);
      return {
        repo,
        url,
        cleanup: async () => {
          await repo.close().catch(() => {});
          const c = new pg.Client({ connectionString: PG_URL });
          await c.connect();
          await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
          await c.end();
        },
      };
    },
  },
];

/**
 * The small release day the simulation tests run (2,000 devices, injected failures). Generous
 * deadline: CI runs it beside mmdebstrap and QEMU on 2 cores; a wave that opens late is not a
 * failure here (speed is bench/fleet.ts's business), a rollout that never completes is.
 */
export const SMALL_RELEASE_DAY = {
  devices: 2000,
  rate: 1000,
  concurrency: 64,
  failRatio: 0.005,
  rollbackRatio: 0.005,
  silentRatio: 0.005,
  timeoutSeconds: 900,
  log: process.env.IBU_SIM_LOG ? (m: string) => process.stderr.write(`simulate: ${m}\n`) : undefined,
};
