import type { FastifyInstance } from 'fastify';
import { diffPublishedReleases, publishedPackages } from '../../build/release-changes.js';
import { packageChanges, type ReleaseDiff } from '../../build/release-diff.js';
import { IbuError, isIbuError } from '../../errors.js';
import { parseManifestUnverified, readManifestBytes } from '../../release/manifest.js';
import type { Manifest } from '../../release/types.js';
import type { ServerContext } from '../context.js';
import { errorSchema, versionSchema } from '../schemas.js';

/** Paths listed per kind in the answer; the counts are always exact. */
const MAX_PATHS = 500;

/**
 * GET /v1/releases/:version/changes[?from=V]: what a release changes against `from` (default:
 * the release before it on its channel): packages upgraded, added, removed (from the package
 * list `ibu build` puts in the image, read from the release's chunks) and the file summary from
 * the manifests. Releases never change once published, so answers are kept in memory.
 */
export function releaseChangesRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const store = ctx.layout.releases;
  const cache = new Map<string, unknown>();
  const manifest = async (v: string): Promise<Manifest> => {
    try {
      return parseManifestUnverified((await readManifestBytes(store, v)).bytes, `release ${v}`);
    } catch (err) {
      if (isIbuError(err, 'NOT_FOUND')) throw new IbuError('RELEASE_NOT_FOUND', `Release ${v} is not published on this server.`);
      throw err;
    }
  };
  app.get<{ Params: { version: string }; Querystring: { from?: string } }>(
    '/v1/releases/:version/changes',
    {
      schema: {
        params: { type: 'object', properties: { version: versionSchema }, required: ['version'] },
        querystring: { type: 'object', properties: { from: versionSchema }, additionalProperties: false },
        response: { 400: errorSchema, 404: errorSchema },
      },
    },
    async (req, reply) => {
      const to = await manifest(req.params.version);
      let from = req.query.from ?? null;
      if (from === null) {
        const versions = (await ctx.catalog.channel(to.channel))?.releases.map((r) => r.version) ?? [];
        const i = versions.indexOf(to.version);
        from = i > 0 ? versions[i - 1]! : null;
      }
      const key = `${from ?? ''}>${to.version}`;
      let body = cache.get(key);
      if (!body) {
        let diff: ReleaseDiff;
        if (from === null) {
          // The first release of its channel: every package is new.
          const files = { added: to.files.map((f) => f.path), removed: [], changed: [] };
          diff = { from: '', to: to.version, packages: packageChanges({ ...EMPTY }, await publishedPackages(store, to)), files };
        } else diff = await diffPublishedReleases(store, await manifest(from), to);
        body = summarise(diff, from);
        if (cache.size > 256) cache.clear();
        cache.set(key, body);
      }
      reply.header('cache-control', 'public, max-age=60');
      return body;
    },
  );
}

const EMPTY = { format: 1 as const, product: '', suite: '', archives: [], packages: [] };

function summarise(d: ReleaseDiff, from: string | null): unknown {
  const cap = (l: string[]) => l.slice(0, MAX_PATHS);
  const f = d.files;
  return {
    from,
    to: d.to,
    packages: d.packages,
    files: {
      counts: { added: f.added.length, removed: f.removed.length, changed: f.changed.length },
      added: cap(f.added),
      removed: cap(f.removed),
      changed: cap(f.changed),
      truncated: f.added.length > MAX_PATHS || f.removed.length > MAX_PATHS || f.changed.length > MAX_PATHS,
    },
  };
}
