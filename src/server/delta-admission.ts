import { compareVersions } from '../version.js';
import { PRIORITY, type AdmitAnswer, type QueueFacts } from './delta-queue.js';

/**
 * Whether a client's request may add a delta build to the queue (issue #15 item 5: an anonymous
 * client once queued 54 builds in 141 ms and pushed the pair real devices needed to position 36).
 * Pure: the delta service gathers the facts (src/server/delta-service.ts) and performs the answer.
 * Only requests that would create a job come here; a pair already queued, building or built costs
 * nothing more however many ask for it.
 */

/**
 * Why a pair is wanted: `device`, an enrolled device's check-in named it as its next hop;
 * `path`, without a fleet, it leads into the newest release of a channel that lists `from`;
 * `none`, nothing says anyone needs it (a rollback, a skipped version, a flood).
 */
export type Demand = 'device' | 'path' | 'none';

export interface AdmissionLimits {
  /** Jobs waiting in the queue, all kinds together; a client request past it is refused. */
  maxQueued: number;
  /** Builds of pairs with no demand one client address may have queued or building at once. */
  perClient: number;
}

export const ADMISSION_DEFAULTS: AdmissionLimits = { maxQueued: 256, perClient: 4 };

export type Refusal = 'DELTA_QUEUE_FULL' | 'DELTA_CLIENT_LIMIT';

export type Admission = AdmitAnswer<{ admit: false; code: Refusal; message: string }>;

/**
 * Needed pairs (device or path) go in at device priority and, when the queue is full, displace
 * the newest job nobody needs; other pairs go last, at most `perClient` per address, and never
 * past the bound. A client reconnecting as fast as it is dropped keeps its address, so its jobs
 * still count against it.
 */
export function admit(demand: Demand, q: QueueFacts, l: AdmissionLimits): Admission {
  if (demand !== 'none') {
    if (q.queued < l.maxQueued) return { admit: true, priority: PRIORITY.device, evict: false };
    if (q.evictable) return { admit: true, priority: PRIORITY.device, evict: true };
    return { admit: false, code: 'DELTA_QUEUE_FULL', message: queueFull(l) };
  }
  if (q.clientHeld >= l.perClient)
    return {
      admit: false,
      code: 'DELTA_CLIENT_LIMIT',
      message:
        `This address already has ${q.clientHeld} delta builds queued for pairs no device needs (at most ${l.perClient}); ` +
        'retry after they finish, or fetch the release as chunks.',
    };
  if (q.queued >= l.maxQueued) return { admit: false, code: 'DELTA_QUEUE_FULL', message: queueFull(l) };
  return { admit: true, priority: PRIORITY.unneeded, evict: false };
}

function queueFull(l: AdmissionLimits): string {
  return `The delta build queue is full (${l.maxQueued} jobs); fetch the release as chunks, or retry later.`;
}

/**
 * The fleet-less upgrade path: `to` is the newest release of a channel that also lists `from`,
 * and `from` is older. Channels are lists of versions, oldest first (src/server/release-catalog.ts).
 */
export function onPublishedPath(channels: ReadonlyArray<readonly string[]>, from: string, to: string): boolean {
  return channels.some((versions) => {
    if (!versions.includes(from) || !versions.includes(to)) return false;
    const newest = [...versions].sort(compareVersions).at(-1);
    return newest === to && compareVersions(from, to) < 0;
  });
}

/**
 * The key a client's jobs are counted under: its address, with an IPv4-mapped IPv6 address as
 * IPv4, and an IPv6 address cut to its /64 (one host gets a whole /64 and can pick any address in it).
 */
export function clientKey(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1]!;
  if (!ip.includes(':')) return ip;
  const [head = '', tail] = ip.toLowerCase().split('%')[0]!.split('::') as [string, string | undefined];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = tail === undefined ? left : [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
