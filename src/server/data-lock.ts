import { promises as fsp, constants as fsc } from 'node:fs';
import { IbuError } from '../errors.js';
import { processAlive as alive } from '../util/process.js';

/**
 * One `ibu serve` per data directory: start-up removes temp files in cache/, which would break
 * a second server's builds. The lock file holds the owner's pid; a lock whose process is gone
 * (kill -9, power loss) is stale and taken over.
 */
export async function lockDataDir(file: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await fsp.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      let released = false;
      return async () => {
        if (released) return;
        released = true;
        await fsp.rm(file, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number((await fsp.readFile(file, 'utf8').catch(() => '')).trim());
      if (pid > 0 && alive(pid)) {
        throw new IbuError(
          'CONFLICT',
          `Another ibu serve (pid ${pid}${pid === process.pid ? ', this process' : ''}) is using this data directory (${file}); ` +
            `stop it first, or remove the lock file if no server is running.`,
        );
      }
      await fsp.rm(file, { force: true });
    }
  }
  throw new IbuError('CONFLICT', `Could not take the data directory lock ${file}; remove it if no ibu serve is running.`);
}
