import type { Groups } from './groups.js';
import type { RebootLeases } from './reboot-leases.js';
import type { Releases } from './releases.js';
import type { FleetRepository } from './repository.js';
import type { Rollouts } from './rollouts.js';
import { applySettings, loadSettings, type FleetConfig } from './settings.js';

/** The parts of the fleet kept in memory and written through. */
export interface CachedParts {
  config: FleetConfig;
  releases: Releases;
  rollouts: Rollouts;
  groups: Groups;
  leases: RebootLeases;
}

/**
 * Loading the fleet's cached parts: all of them at start (and on `reload`), and with replicas the
 * part a change notice names, one notice at a time, in order. A notice comes from any process,
 * this one included; '*' means notices may have been missed, so everything is read again.
 */
export class FleetCache {
  /** Change notices applied so far (for /metrics). */
  reloads = 0;
  private reloading: Promise<void> = Promise.resolve();

  constructor(
    private readonly repo: FleetRepository,
    private readonly parts: CachedParts,
    /** Where a failed reload is reported (the server passes its logger). */
    private readonly onBackgroundError: (err: unknown, what: string) => void,
  ) {}

  /** The run-time settings saved by `updateSettings`, over the config the process started with. */
  async loadSettings(): Promise<void> {
    const saved = await loadSettings(this.repo);
    if (saved) applySettings(this.parts.config, saved);
  }

  /** Re-reads the small in-memory state from the repository. */
  async reload(): Promise<void> {
    await this.parts.releases.load();
    await this.parts.rollouts.load();
    await this.parts.groups.load();
    await this.parts.leases.load(this.repo);
  }

  /** Another process (or this one) changed cached state: reload that part. */
  onChangeNotice(topic: string): void {
    this.reloading = this.reloading
      .then(async () => {
        if (topic === 'releases') await this.parts.releases.load();
        else if (topic === 'rollouts') await this.parts.rollouts.load();
        else if (topic === 'groups') await this.parts.groups.load();
        else if (topic === 'settings' || topic === '*') {
          await this.loadSettings();
          if (topic === '*') await this.reload();
        }
        this.reloads++;
      })
      .catch((err: unknown) => this.onBackgroundError(err, `reloading ${topic} after a change notice`));
  }
}
