import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IbuError } from '../errors.js';
import { run } from '../util/exec.js';
import type { ProductSpec } from './product-spec.js';

/** The shell hooks ibu hands mmdebstrap (assets/build/, beside src/ and dist/). */
export const HOOK_DIR = fileURLToPath(new URL('../../../assets/build/', import.meta.url));

export const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

export interface MmdebstrapPlan {
  argv: string[];
  env: Record<string, string>;
}

/**
 * The mmdebstrap command line shared by `ibu build lock` and `ibu build`: same variant, package
 * set and apt/dpkg options, so the lock's resolution is the build's. Pure.
 */
export function mmdebstrapArgv(
  spec: ProductSpec,
  o: { target: string; sources: string[]; customize: string[]; extra?: string[]; keyring?: boolean },
): string[] {
  const include = [...spec.packages, ...(spec.kernel ? [spec.kernel] : [])];
  return [
    '--mode=root',
    `--variant=${spec.variant}`,
    `--architectures=${spec.architecture}`,
    ...(o.keyring === false ? [] : [`--keyring=${DEBIAN_KEYRING}`]),
    ...(include.length > 0 ? [`--include=${include.join(',')}`] : []),
    // An old snapshot's Release must still be accepted (the pool is the pin, not the clock).
    '--aptopt=Acquire::Check-Valid-Until "false"',
    '--dpkgopt=path-exclude=/usr/share/doc/*/changelog*',
    ...(o.extra ?? []),
    ...o.customize.map((h) => `--customize-hook=${h}`),
    spec.suite,
    o.target,
    ...o.sources,
  ];
}

/** The archive source lines for the spec's mirrors. */
export function mirrorSources(spec: ProductSpec): string[] {
  return spec.mirrors.flatMap((m) => m.suites.map((s) => `deb ${m.uri} ${s} ${m.components.join(' ')}`));
}

/** Quotes a word for a POSIX shell. */
export function shq(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Runs mmdebstrap, keeping its log in `logFile`. A failure becomes the code that says what to
 * fix: HOOK_FAILED (which hook, its exit status, the end of its log), PACKAGE_UNKNOWN,
 * MIRROR_UNREACHABLE, else TOOL_FAILED with the end of the log.
 */
export async function runMmdebstrap(argv: string[], o: { env: Record<string, string>; logFile: string; hookLogs?: string[] }): Promise<void> {
  const res = await run('mmdebstrap', argv, { env: { ...process.env, ...o.env }, allowFailure: true });
  await fsp.writeFile(o.logFile, res.stdout + res.stderr);
  if (res.code === 0) return;
  for (const log of o.hookLogs ?? []) {
    const rc = readOr(`${log}.rc`);
    if (rc !== null && rc.trim() !== '0') {
      const tail = (readOr(log) ?? '').split('\n').slice(-20).join('\n').trim();
      throw new IbuError('HOOK_FAILED', `the hook ${path.basename(log, '.log')} failed with exit status ${rc.trim()}; the end of its log:\n${tail}`, {
        details: { exitStatus: Number(rc), log: tail },
      });
    }
  }
  const text = res.stderr + res.stdout;
  const unknown = [...text.matchAll(/Unable to locate package (\S+)|Package '?([^ ']+)'? has no installation candidate/g)].map((m) => m[1] ?? m[2]!);
  if (unknown.length > 0) {
    const names = [...new Set(unknown)];
    throw new IbuError('PACKAGE_UNKNOWN', `no such package in the spec's archives: ${names.join(', ')}. Check packages: and vendor-debs: in the spec.`, {
      details: { packages: names },
    });
  }
  if (/Could not resolve|Temporary failure resolving|Could not connect|Connection failed|Failed to fetch/.test(text)) {
    throw new IbuError('MIRROR_UNREACHABLE', `mmdebstrap could not reach a mirror:\n${tail(text, 15)}`);
  }
  throw new IbuError('TOOL_FAILED', `mmdebstrap failed (exit ${res.code}); the end of its log (${o.logFile}):\n${tail(text, 25)}`);
}

function tail(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join('\n');
}

function readOr(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** Checks that each mirror answers for each suite before minutes go into mmdebstrap. */
export async function assertMirrorsReachable(spec: ProductSpec): Promise<void> {
  for (const m of spec.mirrors) {
    for (const s of m.suites) {
      const url = `${m.uri}/dists/${s}/InRelease`;
      let status: number;
      try {
        status = (await fetch(url, { method: 'HEAD', signal: AbortSignal.timeout(30_000) })).status;
      } catch (err) {
        const why = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
        throw new IbuError('MIRROR_UNREACHABLE', `the mirror ${m.uri} is unreachable (${url}: ${why}). Check the URL and the network.`, { cause: err });
      }
      if (status === 404) {
        throw new IbuError('MIRROR_UNREACHABLE', `the mirror ${m.uri} has no suite ${s} (${url}: HTTP 404). Check mirrors: in the spec.`);
      }
      if (status >= 400) throw new IbuError('MIRROR_UNREACHABLE', `the mirror ${m.uri} answered HTTP ${status} for ${url}.`);
    }
  }
}
