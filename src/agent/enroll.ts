import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { AgentConfig } from './config.js';
import type { ServerClient } from './server-client.js';

export interface EnrollResult {
  deviceId: string;
  tokenFile: string;
}

/**
 * `upgradectl enroll`: trades the enrollment secret (or a pre-authorization) for a device token
 * and stores it in `server.tokenFile` (mode 0600, written atomically).
 */
export async function enrollDevice(cfg: AgentConfig, server: ServerClient | null, o: { secret?: string; group?: string }): Promise<EnrollResult> {
  const s = cfg.server;
  if (!s || !server) throw new IbuError('CONFIG_INVALID', 'No server is configured (server.url and server.deviceId in the agent config).');
  if (!s.tokenFile) throw new IbuError('CONFIG_INVALID', 'Set server.tokenFile in the agent config: enroll stores the device token there.');
  const r = await server.enroll({ deviceId: s.deviceId, enrollmentSecret: o.secret, group: o.group, channel: cfg.channel });
  await fsp.mkdir(path.dirname(s.tokenFile), { recursive: true });
  await writeFileAtomic(s.tokenFile, r.token + '\n', 0o600);
  return { deviceId: r.deviceId, tokenFile: s.tokenFile };
}
