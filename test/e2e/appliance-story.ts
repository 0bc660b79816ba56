/**
 * The common start and end of an appliance story in QEMU (test/e2e/appliance-*.test.ts): a work
 * dir, the release set, signing keys, a store with the story's first releases, the fleet server
 * and the operator's SSH identity; at the end the device killed, the server stopped, the work dir
 * removed (or kept with IBU_E2E_KEEP=1).
 */
import path from 'node:path';
import { FleetServer, ibu } from './harness.js';
import { applianceReleases, type Appliance } from './appliance.js';
import { makeWorkDir, removeWorkDir } from './work-dir.js';
import { sshIdentity, type RunningDevice, type SshIdentity } from './appliance-device.js';

export interface ApplianceStory {
  work: string;
  app: Appliance;
  keys: string;
  store: string;
  server: FleetServer;
  id: SshIdentity;
}

export async function openApplianceStory(o: {
  prefix: string;
  /** The release set; default the example appliance (IBU_APPLIANCE_SPEC: another spec dir). */
  releases?: (work: string) => Promise<Appliance>;
  /** Publishes what the device must find at its first boot (the store is empty before). */
  publish: (s: Omit<ApplianceStory, 'server' | 'id'>) => Promise<unknown>;
}): Promise<ApplianceStory> {
  const work = await makeWorkDir(o.prefix);
  const t0 = Date.now();
  const app = await (o.releases ? o.releases(work) : applianceReleases({ specDir: process.env.IBU_APPLIANCE_SPEC }));
  console.log(`appliance releases ${app.built ? 'built' : 'from the cache'} in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${app.dir}`);
  const keys = path.join(work, 'keys');
  await ibu('keys', 'generate', '--out', keys);
  const store = path.join(work, 'store');
  await o.publish({ work, app, keys, store });
  const server = await new FleetServer(store, path.join(work, 'server.log')).start();
  const id = await sshIdentity(work);
  return { work, app, keys, store, server, id };
}

export async function closeApplianceStory(s: { dev: RunningDevice | null; server?: FleetServer; work: string }): Promise<void> {
  if (s.dev) await s.dev.kill().catch(() => null);
  await s.server?.stop();
  await removeWorkDir(s.work);
}
