import { promises as fsp } from 'node:fs';
import type { AgentConfig } from './config.js';
import { imageVersion } from './images-dir.js';

/**
 * The version running now: from the config (tests), else the image file behind the root loop
 * device (after a soft-reboot the kernel's command line still names the image it booted), else
 * the `loop=…/<v>.img` the kernel was booted with.
 */
export async function runningVersion(cfg: Pick<AgentConfig, 'runningVersion' | 'cmdlineFile'>): Promise<string | null> {
  if (cfg.runningVersion) return cfg.runningVersion;
  if (cfg.cmdlineFile === '/proc/cmdline') {
    const fromRoot = await rootImageVersion();
    if (fromRoot) return fromRoot;
  }
  const text = await fsp.readFile(cfg.cmdlineFile, 'utf8').catch(() => '');
  const m = /(?:^|\s)loop=\S*?([^/\s]+\.img)(?=\s|$)/.exec(text);
  return m ? imageVersion(m[1]!) : null;
}

/** Whether GRUB booted this image as a one-shot trial (`ibu.trial=1` on the kernel command line). */
export async function trialBoot(cfg: Pick<AgentConfig, 'cmdlineFile'>): Promise<boolean> {
  const text = await fsp.readFile(cfg.cmdlineFile, 'utf8').catch(() => '');
  return /(?:^|\s)ibu\.trial=1(?=\s|$)/.test(text);
}

/** The version of the image file the root filesystem is loop-mounted from, if it is. */
async function rootImageVersion(): Promise<string | null> {
  const info = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  // the last mount on / is the one in use (an initramfs' rootfs may be listed before it)
  const root = info
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[4] === '/')
    .at(-1);
  const m = root ? /^\/dev\/(loop\d+)$/.exec(root[root.indexOf('-') + 2] ?? '') : null;
  if (!m) return null;
  const backing = (await fsp.readFile(`/sys/block/${m[1]}/loop/backing_file`, 'utf8').catch(() => '')).trim();
  return /\/images\/[^/]+\.img$/.test(backing) ? imageVersion(backing.slice(backing.lastIndexOf('/') + 1)) : null;
}
