import type { MaintenanceWindow } from '../fleet/protocol.js';
import { inWindow } from '../fleet/window.js';

// One window semantics for the server and the device: the fleet's (src/fleet/window.ts).
export { inWindow, localTime } from '../fleet/window.js';

/** The next time the window opens (minute resolution, within 8 days), for messages. */
export function nextOpening(w: MaintenanceWindow, from: Date): Date | null {
  const t = new Date(Math.ceil(from.getTime() / 60000) * 60000);
  for (let i = 0; i < 8 * 24 * 60; i++) {
    if (inWindow(w, t)) return t;
    t.setTime(t.getTime() + 60000);
  }
  return null;
}
