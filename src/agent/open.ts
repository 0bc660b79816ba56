import { GrubBootloader } from '../boot/grub-bootloader.js';
import { resolveEnvLocation } from '../boot/env-location.js';
import { LocalStore } from '../store/local-store.js';
import type { Store } from '../store/store.js';
import { Agent, type DeltaApplier } from './agent.js';
import { deviceToken, type AgentConfig } from './config.js';
import { crashPoint } from './crash-point.js';
import { ImagesDir } from './images-dir.js';
import { ServerClient } from './server-client.js';

export interface OpenOptions {
  json?: boolean;
  log?: (line: string) => void;
  applyDelta?: DeltaApplier;
  /** Seed downloads from cfg.systemRoot's files (upgradectl adopt). */
  seedFromSystemRoot?: boolean;
}

/** Wires the real parts from a resolved config: bootloader (location detected), server, store. */
export async function openAgent(cfg: AgentConfig, o: OpenOptions = {}): Promise<Agent> {
  const loc = await resolveEnvLocation({
    hostMount: cfg.hostMount,
    envDir: cfg.boot.envDir ?? undefined,
    espEnvDir: cfg.boot.espEnvDir ?? undefined,
    tryClearedBy: cfg.boot.tryClearedBy ?? undefined,
  });
  const bootloader = new GrubBootloader({
    dir: loc.dir,
    tryClearedBy: loc.tryClearedBy,
    reason: loc.reason,
    afterCopyWritten: (i) => crashPoint(`bootenv-copy-${i}`),
    // GRUB's fallback order after default_image (assets/grub/10_ibu): newest first.
    listImages: async () => (await new ImagesDir(cfg.imagesDir).installed()).reverse(),
  });
  const token = await deviceToken(cfg);
  const server = cfg.server ? new ServerClient(cfg.server.url, cfg.server.deviceId, token) : null;
  const store = await openStore(cfg, token);
  // src/delta is loaded only when a delta is really applied (start-up cost of every command).
  const applyDelta: DeltaApplier = o.applyDelta ?? (async (a) => (await import('../delta/index.js')).applyDelta(a));
  return new Agent({
    cfg,
    bootloader,
    server,
    store,
    applyDelta,
    deltaEncoders: async () => {
      const [{ localEncoders }, { formatEncoders }] = await Promise.all([import('../delta/recompressor.js'), import('../delta/encoder-set.js')]);
      return formatEncoders(localEncoders());
    },
    log: o.log,
    progress: !o.json && Boolean(process.stderr.isTTY),
    seedFromSystemRoot: o.seedFromSystemRoot,
  });
}

/** The release source: download.store (a directory or a static URL), else the server's /v1 routes, else none. */
export async function openStore(cfg: AgentConfig, token: string | null): Promise<Store | null> {
  const http = async (url: string, layout?: 'api'): Promise<Store> => {
    // Loaded on demand: undici costs a noticeable part of the start-up of every command.
    const { HttpStore } = await import('../store/http-store.js');
    return new HttpStore(url, { layout, headers: token ? { authorization: `Bearer ${token}` } : {} });
  };
  if (cfg.download.store) return /^https?:\/\//i.test(cfg.download.store) ? http(cfg.download.store) : new LocalStore(cfg.download.store);
  if (cfg.server) return http(`${cfg.server.url}/v1`, 'api');
  return null;
}
