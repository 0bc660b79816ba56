/** The work dir of an e2e suite: logs, disks and builds, in the system temp dir. */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export function makeWorkDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), prefix));
}

/** Removes the work dir after the suite, or keeps it with IBU_E2E_KEEP=1 (and prints where) for reading. */
export async function removeWorkDir(work: string): Promise<void> {
  if (work && process.env.IBU_E2E_KEEP !== '1') await fsp.rm(work, { recursive: true, force: true });
  else if (work) console.log(`e2e work dir kept: ${work}`);
}
