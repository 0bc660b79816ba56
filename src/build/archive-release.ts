import type { Mirror } from './product-spec.js';

/**
 * Facts about a Debian archive as apt saw it: the identity of a Release file and how apt names
 * its list files. Pure.
 */
export interface ReleaseFields {
  origin: string;
  suite: string;
  codename: string;
  date: string;
}

/** The header fields of an InRelease or Release file (the PGP armour of InRelease is skipped). */
export function parseReleaseFields(text: string): ReleaseFields {
  const field = (name: string): string => new RegExp(`^${name}: *(.*)$`, 'm').exec(text)?.[1]?.trim() ?? '';
  return { origin: field('Origin'), suite: field('Suite'), codename: field('Codename'), date: field('Date') };
}

/** apt's list file prefix for a mirror (URItoFileName): scheme dropped, `/` becomes `_`. */
export function aptListPrefix(uri: string): string {
  return (
    uri
      .replace(/^[a-z+]+:\/\//, '')
      .replace(/\/+$/, '')
      .replace(/\//g, '_') + '_dists_'
  );
}

/** The mirror a list file came from: the longest matching prefix (debian vs debian-security). */
export function mirrorOfListFile(file: string, mirrors: readonly Mirror[]): Mirror | undefined {
  let best: Mirror | undefined;
  for (const m of mirrors) {
    const p = aptListPrefix(m.uri);
    if (file.startsWith(p) && (!best || p.length > aptListPrefix(best.uri).length)) best = m;
  }
  return best;
}

/** The suite a list file names: `<prefix><suite>_InRelease` or `<prefix><suite>_main_binary-amd64_Packages`. */
export function suiteOfListFile(file: string, mirror: Mirror): string | undefined {
  const rest = file.slice(aptListPrefix(mirror.uri).length);
  return mirror.suites.find((s) => rest.startsWith(`${s.replace(/\//g, '_')}_`));
}

/** Seconds since 1970 of a Release Date (RFC 2822, UTC), or null. */
export function releaseDateEpoch(date: string): number | null {
  const t = Date.parse(date);
  return Number.isFinite(t) ? Math.floor(t / 1000) : null;
}

/** A deb822 sources file naming the spec's mirrors: what the image's apt uses after the build. */
export function deb822Sources(mirrors: readonly Mirror[]): string {
  return (
    mirrors
      .map((m) =>
        [
          'Types: deb',
          `URIs: ${m.uri}`,
          `Suites: ${m.suites.join(' ')}`,
          `Components: ${m.components.join(' ')}`,
          'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
        ].join('\n'),
      )
      .join('\n\n') + '\n'
  );
}
