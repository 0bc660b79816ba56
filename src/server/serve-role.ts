/**
 * What one `ibu serve` process does (docs/deployment.md): `all` serves and builds (the single
 * server); `api` serves devices and queues delta builds, builds none; `builder` claims and builds
 * the queued deltas and serves no fleet. api and builder share the queue through PostgreSQL.
 */
export type ServeRole = 'api' | 'builder' | 'all';

export const ROLES: readonly ServeRole[] = ['api', 'builder', 'all'];

/** Every problem with a role and the options it needs, as sentences (empty: fine). One rule for the CLI and the library. */
export function roleProblems(role: string, o: { databaseUrl?: string; workers?: number }): string[] {
  if (!(ROLES as readonly string[]).includes(role)) return [`--role '${role}' is not one of ${ROLES.join(', ')}`];
  const problems: string[] = [];
  if (role !== 'all' && !o.databaseUrl) problems.push(`--role ${role} needs --database-url: api and builder replicas share the delta queue in PostgreSQL`);
  if (role === 'api' && (o.workers ?? 0) > 0) problems.push('--role api builds nothing: leave out --workers, or use --role all');
  return problems;
}
