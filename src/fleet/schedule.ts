/**
 * Next check-in time: the server spreads load by giving each device its interval with +-jitter,
 * and a short interval while the device is in the middle of an upgrade so rollouts move on.
 */
export function nextCheckinSeconds(baseSeconds: number, jitter: number, random: () => number = Math.random): number {
  const f = 1 - jitter + 2 * jitter * random();
  return Math.max(1, Math.round(baseSeconds * f * 1000) / 1000);
}
