import { IbuError } from '../errors.js';
import type { MaintenanceWindow } from './protocol.js';

const TIME_RE = /^([01]\d|2[0-3]):([0-5]\d)$/;
const DAY_NAMES = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

/** Checks a window and reports every problem at once (CONFIG_INVALID). */
export function validateWindow(w: unknown): MaintenanceWindow {
  const problems: string[] = [];
  const win = w as MaintenanceWindow;
  if (!win || typeof win !== 'object')
    throw new IbuError('CONFIG_INVALID', 'A maintenance window must be an object { timeZone, rules: [{ days, start, end }] }.');
  if (typeof win.timeZone !== 'string' || !isTimeZone(win.timeZone))
    problems.push(`timeZone '${String(win.timeZone)}' is not an IANA time zone such as Europe/Berlin`);
  if (!Array.isArray(win.rules) || win.rules.length === 0) problems.push('rules must be a non-empty array');
  else {
    win.rules.forEach((r, i) => {
      if (!Array.isArray(r?.days) || r.days.length === 0 || r.days.some((d) => !Number.isInteger(d) || d < 0 || d > 6))
        problems.push(`rules[${i}].days must list weekdays 0 (Sunday) to 6`);
      if (typeof r?.start !== 'string' || !TIME_RE.test(r.start)) problems.push(`rules[${i}].start must be HH:MM`);
      if (typeof r?.end !== 'string' || !TIME_RE.test(r.end)) problems.push(`rules[${i}].end must be HH:MM`);
    });
  }
  if (problems.length) throw new IbuError('CONFIG_INVALID', `The maintenance window is invalid: ${problems.join('; ')}.`, { details: { problems } });
  return { timeZone: win.timeZone, rules: win.rules.map((r) => ({ days: [...r.days], start: r.start, end: r.end })) };
}

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const formatters = new Map<string, Intl.DateTimeFormat>();

/** Local weekday (0 = Sunday) and minute of day at `at` in `timeZone`, by Intl (DST-correct). */
export function localTime(at: Date, timeZone: string): { day: number; minute: number } {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  let day = 0;
  let hour = 0;
  let minute = 0;
  for (const p of f.formatToParts(at)) {
    if (p.type === 'weekday') day = DAY_NAMES.indexOf(p.value);
    else if (p.type === 'hour') hour = Number(p.value);
    else if (p.type === 'minute') minute = Number(p.value);
  }
  return { day, minute: hour * 60 + minute };
}

function toMinutes(hhmm: string): number {
  return Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));
}

/**
 * Whether `at` falls in the window. A rule's range belongs to the weekday it starts on; when end
 * <= start it wraps past midnight (Sat 22:00-02:00 includes Sunday 01:30). A null window is always open.
 */
export function inWindow(win: MaintenanceWindow | null, at: Date): boolean {
  if (!win) return true;
  const { day, minute } = localTime(at, win.timeZone);
  for (const r of win.rules) {
    const s = toMinutes(r.start);
    const e = toMinutes(r.end);
    if (e > s) {
      if (r.days.includes(day) && minute >= s && minute < e) return true;
    } else {
      if (r.days.includes(day) && minute >= s) return true;
      if (r.days.includes((day + 6) % 7) && minute < e) return true;
    }
  }
  return false;
}
