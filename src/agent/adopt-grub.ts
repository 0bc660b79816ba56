import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileAtomic } from '../util/atomic.js';
import { run } from '../util/exec.js';

/** The ibu GRUB script (assets/, beside src/ and dist/). */
export const GRUB_SCRIPT_ASSET = fileURLToPath(new URL('../../../assets/grub/10_ibu', import.meta.url));
/** Where adoption installs it: before the distribution's 10_linux, so images boot first and the conventional entries stay after it. */
export const GRUB_D_SCRIPT = '/etc/grub.d/05_ibu';
/** The env copies on the root filesystem (beside, not in, /boot/grub: Debian's own grubenv stays Debian's). */
export const ADOPT_ENV_DIR = '/boot/ibu';

/**
 * The /etc/grub.d script of an adopted machine: assets/grub/10_ibu with its settings fixed for a
 * conventional root (the host is `/`, the env is /boot/ibu/grubenv{,.bak} on the root fs). The
 * kernel command line comes from /etc/default/grub as grub-mkconfig exports it. `rootMode`: how
 * the initramfs mounts the image; `rw` unless the image is built read-only, since a writable image
 * is the machine's root (machine-id, SSH host keys, accounts are written there).
 */
export function adoptGrubScript(asset: string, rootMode: 'ro' | 'rw' = 'rw'): string {
  const body = asset.replace(/^#!.*\n/, '');
  return (
    '#!/bin/sh\n' +
    '# Installed by upgradectl adopt: boots /images/<version>.img first (try-once, commit), and the\n' +
    '# entries below it (the conventional system) while the env says ibu_adopted (docs/adopt.md).\n' +
    'IBU_HOST=/\n' +
    `IBU_ROOT_MODE=${rootMode}\n` +
    `IBU_ENV_FILES="${ADOPT_ENV_DIR}/grubenv ${ADOPT_ENV_DIR}/grubenv.bak"\n` +
    'export IBU_HOST IBU_ENV_FILES IBU_ROOT_MODE\n' +
    body
  );
}

/**
 * Installs the script into `systemRoot`/etc/grub.d and regenerates the distribution's grub.cfg
 * with its own tool (`update-grub`, Debian's wrapper of grub-mkconfig). Re-running rewrites the
 * same bytes. Returns the command's output for the report.
 */
export async function installGrubIntegration(
  systemRoot: string,
  rootMode: 'ro' | 'rw',
  updateCommand: string[] = ['update-grub'],
): Promise<{ script: string; output: string }> {
  const script = path.join(systemRoot, GRUB_D_SCRIPT);
  await fsp.mkdir(path.dirname(script), { recursive: true });
  await writeFileAtomic(script, adoptGrubScript(await fsp.readFile(GRUB_SCRIPT_ASSET, 'utf8'), rootMode), 0o755);
  const r = await run(updateCommand[0]!, updateCommand.slice(1));
  return { script, output: (r.stdout + r.stderr).trim() };
}
