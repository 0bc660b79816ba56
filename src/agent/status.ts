import { promises as fsp } from 'node:fs';
import type { Bootloader, BootloaderInfo } from '../boot/bootloader.js';
import type { AgentConfig } from './config.js';
import { freeBytes } from './disk-policy.js';
import { ImagesDir } from './images-dir.js';
import { emptyJournal, readJournal, type Journal } from './journal.js';
import { runningVersion } from './running-version.js';

export interface InstalledImage {
  version: string;
  sizeBytes: number;
  allocatedBytes: number;
}

/** The boot loader as status shows it: where it lives, and what its read gave (or why it failed). */
export type BootloaderStatus = BootloaderInfo & ({ source: string; warnings: string[] } | { error: string });

/** `upgradectl status`: what runs, what boots, what is installed and prepared, where the journal stands. */
export interface AgentStatus {
  running: string | null;
  committed: string | null;
  trial: boolean;
  tryImage: string | null;
  bootloader: BootloaderStatus;
  images: InstalledImage[];
  freeBytes: number | null;
  prepared: string | null;
  state: Journal['state'];
  step: Journal['step'];
  target: Journal['target'];
  previous: Journal['previous'];
  lastError: Journal['lastError'];
  pendingEvents: number;
  journal: string;
}

/** Reads the status without changing anything (no journal recovery, no boot env repair). */
export async function readStatus(cfg: AgentConfig, bootloader: Bootloader): Promise<AgentStatus> {
  const dir = new ImagesDir(cfg.imagesDir);
  const j = (await readJournal(cfg.imagesDir).catch(() => ({ journal: emptyJournal() }))).journal;
  const running = await runningVersion(cfg);
  let boot: { defaultImage: string | null; tryImage: string | null; source: string; warnings: string[] } | { error: string };
  try {
    boot = await bootloader.read();
  } catch (err) {
    boot = { error: (err as Error).message };
  }
  const images: InstalledImage[] = [];
  for (const version of await dir.installed()) {
    const st = await fsp.stat(dir.image(version));
    images.push({ version, sizeBytes: st.size, allocatedBytes: st.blocks * 512 });
  }
  const ok = 'error' in boot ? null : boot;
  const def = ok?.defaultImage ?? null;
  return {
    running,
    committed: def,
    trial: running !== null && def !== null && running !== def,
    tryImage: ok?.tryImage ?? null,
    bootloader: { ...bootloader.info, ...(ok ? { source: ok.source, warnings: ok.warnings } : { error: (boot as { error: string }).error }) },
    images,
    freeBytes: await freeBytes(cfg.imagesDir).catch(() => null),
    prepared: j.state === 'prepared' ? (j.target?.version ?? null) : null,
    state: j.state,
    step: j.step,
    target: j.target,
    previous: j.previous,
    lastError: j.lastError,
    pendingEvents: j.pendingEvents.length,
    journal: dir.journal,
  };
}
