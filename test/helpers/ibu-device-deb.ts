import path from 'node:path';
import { run } from '../../src/util/exec.js';

/**
 * Builds the agent's package, ibu-device_<version>_amd64.deb, from this checkout's dist/ (what
 * `npm run package:device` does after tsc) into outDir; returns its path. SOURCE_DATE_EPOCH is
 * fixed, so the same code gives the same bytes: the appliance releases built from it stay cached
 * until the agent changes (test/e2e/appliance.ts).
 */
export async function buildIbuDeviceDeb(outDir: string, version?: string): Promise<string> {
  const script = path.join(process.cwd(), 'packaging/device/build.sh');
  const res = await run('bash', [script, '--out', outDir, ...(version ? ['--version', version] : [])], {
    env: { ...process.env, SOURCE_DATE_EPOCH: '1735689600' },
  });
  const deb = res.stdout.trim().split('\n').pop() ?? '';
  if (!deb.endsWith('.deb')) throw new Error(`packaging/device/build.sh printed no .deb path:\n${res.stdout}${res.stderr}`);
  return deb;
}
