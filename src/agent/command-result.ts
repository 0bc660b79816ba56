import type { HealthResult } from './health.js';
import type { Journal } from './journal.js';
import type { Outcome } from './state-machine.js';

/** How a step ends the run: the outcome the CLI reports and a sentence for people. */
export interface End {
  outcome: Outcome;
  message: string;
}

/** What prepare, apply, confirm and rollback return (the CLI prints it, or its JSON). */
export interface CommandResult extends End {
  state: Journal['state'];
  target: string | null;
  running: string | null;
  migration?: Journal['migration'];
  health?: HealthResult[];
  download?: Record<string, unknown>;
  removed?: string[];
}
