import { promises as fsp } from 'node:fs';
import type { AgentConfig } from './config.js';
import { imageVersion } from './images-dir.js';

/** The version running now: from the config (tests), else the `loop=…/<v>.img` the kernel was booted with. */
export async function runningVersion(cfg: Pick<AgentConfig, 'runningVersion' | 'cmdlineFile'>): Promise<string | null> {
  if (cfg.runningVersion) return cfg.runningVersion;
  const text = await fsp.readFile(cfg.cmdlineFile, 'utf8').catch(() => '');
  const m = /(?:^|\s)loop=\S*?([^/\s]+\.img)(?=\s|$)/.exec(text);
  return m ? imageVersion(m[1]!) : null;
}

/** Whether GRUB booted this image as a one-shot trial (`ibu.trial=1` on the kernel command line). */
export async function trialBoot(cfg: Pick<AgentConfig, 'cmdlineFile'>): Promise<boolean> {
  const text = await fsp.readFile(cfg.cmdlineFile, 'utf8').catch(() => '');
  return /(?:^|\s)ibu\.trial=1(?=\s|$)/.test(text);
}
