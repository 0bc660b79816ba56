import type { MaintenanceWindow } from '../fleet/protocol.js';

/** Local weekday (0 = Sunday) and minute of the day of `at` in an IANA time zone, via Intl. */
export function localTime(at: Date, timeZone: string): { day: number; minute: number } {
  const parts = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).formatToParts(at);
  const get = (t: string): string => parts.find((p) => p.type === t)?.value ?? '';
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'].indexOf(get('weekday'));
  return { day, minute: Number(get('hour')) * 60 + Number(get('minute')) };
}

const toMin = (hhmm: string): number => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

/**
 * Whether `at` falls inside the window. A rule's `days` are the days the range starts on; when
 * `end` is not after `start` the range wraps past midnight into the next day (22:00–04:00).
 */
export function inWindow(w: MaintenanceWindow | null, at: Date): boolean {
  if (!w) return true;
  const { day, minute } = localTime(at, w.timeZone);
  for (const r of w.rules) {
    const s = toMin(r.start);
    const e = toMin(r.end);
    if (e > s) {
      if (r.days.includes(day) && minute >= s && minute < e) return true;
    } else {
      if (r.days.includes(day) && minute >= s) return true;
      if (r.days.includes((day + 6) % 7) && minute < e) return true;
    }
  }
  return false;
}

/** The next time the window opens (minute resolution, within 8 days), for messages. */
export function nextOpening(w: MaintenanceWindow, from: Date): Date | null {
  const t = new Date(Math.ceil(from.getTime() / 60000) * 60000);
  for (let i = 0; i < 8 * 24 * 60; i++) {
    if (inWindow(w, t)) return t;
    t.setTime(t.getTime() + 60000);
  }
  return null;
}
