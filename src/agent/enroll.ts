import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { signEnrollment } from '../fleet/device-proof.js';
import type { AgentConfig } from './config.js';
import { loadOrCreateDeviceKey } from './device-key.js';
import type { ServerClient } from './server-client.js';

export interface EnrollResult {
  deviceId: string;
  tokenFile: string;
}

/**
 * `upgradectl enroll`: binds the device id to the device's own key (created on first use) and
 * trades the secret (or a pre-authorization) for a device token, stored in `server.tokenFile`
 * (mode 0600, written atomically). Enrolling again later needs no secret: the key proves the
 * device, and the server rotates the token.
 */
export async function enrollDevice(cfg: AgentConfig, server: ServerClient | null, o: { secret?: string; group?: string }): Promise<EnrollResult> {
  const s = cfg.server;
  if (!s || !server) throw new IbuError('CONFIG_INVALID', 'No server is configured (server.url and server.deviceId in the agent config).');
  if (!s.tokenFile) throw new IbuError('CONFIG_INVALID', 'Set server.tokenFile in the agent config: enroll stores the device token there.');
  if (!s.keyFile) throw new IbuError('CONFIG_INVALID', 'Set server.keyFile in the agent config: enroll keeps the device key there.');
  const key = await loadOrCreateDeviceKey(s.keyFile);
  const r = await server.enroll(signEnrollment(key, { deviceId: s.deviceId, enrollmentSecret: o.secret, group: o.group, channel: cfg.channel }));
  await fsp.mkdir(path.dirname(s.tokenFile), { recursive: true });
  await writeFileAtomic(s.tokenFile, r.token + '\n', 0o600);
  return { deviceId: r.deviceId, tokenFile: s.tokenFile };
}
