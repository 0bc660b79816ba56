import type { Bootloader } from '../boot/bootloader.js';
import type { Store } from '../store/store.js';
import type { AgentConfig } from './config.js';
import type { ImagesDir } from './images-dir.js';
import type { JournalFile } from './journal.js';
import type { ManifestCache } from './manifest-cache.js';
import type { ServerClient } from './server-client.js';
import type { DeviceFacts } from './state-machine.js';

/** What the agent's steps work with during one run (built by Agent, passed to the step modules). */
export interface AgentContext {
  readonly cfg: AgentConfig;
  readonly dir: ImagesDir;
  /** Every write checkpoints the filesystem when GRUB could not see it otherwise. */
  readonly boot: Bootloader;
  readonly server: ServerClient | null;
  readonly store: Store | null;
  readonly journal: JournalFile;
  readonly manifests: ManifestCache;
  readonly log: (line: string) => void;
  readonly now: () => Date;
  /** Reads the facts again (a step may have changed them). */
  facts(): Promise<DeviceFacts>;
}
