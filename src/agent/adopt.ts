import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { GrubBootloader } from '../boot/grub-bootloader.js';
import { IbuError, isIbuError } from '../errors.js';
import { Keyring } from '../release/keyring.js';
import { parseAndVerifyManifest } from '../release/manifest.js';
import { manifestPath } from '../store/layout.js';
import { run } from '../util/exec.js';
import { assertVersion } from '../version.js';
import type { CommandResult } from './command-result.js';
import { ADOPT_ENV_DIR, installGrubIntegration } from './adopt-grub.js';
import { adoptMigrationRules } from './adopt-migration.js';
import { planAdoption, type AdoptPlan } from './adopt-preflight.js';
import { probeAdoptFacts } from './adopt-probe.js';
import { checkpointFilesystem } from './checkpoint.js';
import { deviceToken, type AgentConfig } from './config.js';
import { bytesToAllocate } from './disk-policy.js';
import { isReadonlyImage } from './etc-upgrade.js';
import { ImagesDir } from './images-dir.js';
import { readJournal } from './journal.js';
import { migrateTree, withImageMounted, type MigrationChange } from './migration.js';
import { openAgent, openStore } from './open.js';

export interface AdoptOptions {
  version: string;
  /** The raw agent config file: copied into the image with its paths made the image's (/host). */
  configFile: string;
  /** The root filesystem seen alone; default: a private bind mount of systemRoot under /run/ibu. */
  host?: string;
  /** Do not reboot at the end (the trial starts at the next reboot). */
  noReboot?: boolean;
  /** The command that regenerates grub.cfg (default update-grub). */
  updateGrub?: string[];
  log: (line: string) => void;
  json?: boolean;
}

export interface AdoptResult {
  outcome: CommandResult['outcome'];
  message: string;
  version: string;
  plan: AdoptPlan;
  download?: Record<string, unknown>;
  migration: MigrationChange[];
  grub: { script: string };
}

const BIND_HOST = '/run/ibu/adopt-host';
/**
 * What a conventionally installed machine reports as its version (check-ins, events) while it is
 * being adopted: a valid version (the server validates every one) that sorts before any release.
 */
export const CONVENTIONAL_VERSION = '0-conventional';

/**
 * `upgradectl adopt`: moves a conventionally installed Debian machine onto images, keeping a way
 * back at every step (docs/adopt.md):
 *   1. preflight (pure plan over probed facts): nothing is touched when it fails;
 *   2. a fresh env in /boot/ibu with ibu_adopted=V and no default: GRUB boots no image yet;
 *   3. prepare V as any upgrade (journal, resumable download), seeded from the live root's files;
 *   4. migrate the live configuration into the image;
 *   5. the /etc/grub.d script + update-grub: images first, the conventional entries after them;
 *   6. apply as any upgrade: checkpoint, try_image=V, reboot. The image boots once as a trial and
 *      commits after its health checks; a failure anywhere lands on the conventional system.
 * Every step is idempotent, so after a power cut the conventional system boots and adopt runs again.
 */
export async function adopt(cfg: AgentConfig, o: AdoptOptions): Promise<AdoptResult> {
  const version = assertVersion(o.version);
  if (process.getuid?.() !== 0) throw new IbuError('ROOT_REQUIRED', 'upgradectl adopt needs root (mounts, GRUB, the image).');
  let bound = false;
  let host = o.host;
  if (!host) {
    host = BIND_HOST;
    await fsp.mkdir(host, { recursive: true });
    // Non-recursive: the root filesystem alone, with what other mounts (/boot) hide under them.
    const mounted = await run('mountpoint', ['-q', host], { allowFailure: true });
    if (mounted.code !== 0) await run('mount', ['--bind', cfg.systemRoot, host]);
    bound = true;
  }
  try {
    return await adoptOn(cfg, o, version, path.resolve(host));
  } finally {
    if (bound) await run('umount', [host], { allowFailure: true });
  }
}

async function adoptOn(cfg: AgentConfig, o: AdoptOptions, version: string, host: string): Promise<AdoptResult> {
  const images = new ImagesDir(path.join(host, 'images'));
  const envDir = path.join(host, ADOPT_ENV_DIR);
  const derived: AgentConfig = {
    ...cfg,
    hostMount: host,
    imagesDir: images.root,
    runningVersion: CONVENTIONAL_VERSION, // a conventional system runs no image
    cmdlineFile: '/dev/null',
    boot: { ...cfg.boot, envDir },
    migration: [],
    download: { ...cfg.download, useDelta: false },
    transport: 'ibu',
    // Adoption's trial must go through the firmware and GRUB (the conventional system's kernel cannot
    // soft-reboot into an image, and its GRUB entry is the way back), so the method is always a reboot.
    reboot: o.noReboot
      ? { ...cfg.reboot, method: 'reboot', command: ['true'], forceCommand: ['true'], forceAfterSeconds: 0, sysrqAfterSeconds: 0 }
      : { ...cfg.reboot, method: 'reboot' },
  };

  // 1. Preflight: the signed manifest and the machine's facts; nothing written yet.
  const store = await openStore(cfg, await deviceToken(cfg));
  if (!store) throw new IbuError('CONFIG_INVALID', 'No release source: set server.url or download.store in the agent config, or pass --store.');
  const bytes = await store.getFile(manifestPath(version)).catch((err) => {
    if (isIbuError(err, 'NOT_FOUND'))
      throw new IbuError('RELEASE_NOT_FOUND', `Release ${version} is not in ${store.location}; check the version.`, { cause: err });
    throw err;
  });
  const { manifest: m } = parseAndVerifyManifest(bytes, await Keyring.load(cfg.keyring), `the manifest of ${version} from ${store.location}`);
  if (m.channel !== cfg.channel)
    throw new IbuError('MANIFEST_INVALID', `Release ${version} is on channel '${m.channel}', this machine follows '${cfg.channel}'.`);
  const st = await fsp.statfs(host);
  const imageBytes = bytesToAllocate(m.chunks, Number(st.bsize));
  const have = await allocated(images.image(version)).then(
    async (n) => n || (await allocated(images.partial(version))) + (await allocated(images.staged(version))),
  );
  const facts = await probeAdoptFacts({
    systemRoot: cfg.systemRoot,
    host,
    neededBytes: Math.max(0, imageBytes - have),
    imageBytes,
    reserveBytes: cfg.space.reserveBytes,
    keepImages: cfg.space.keepImages,
  });
  const plan = planAdoption(facts);
  for (const w of plan.warnings) o.log(`warning: ${w}`);
  o.log(`preflight passed: ${facts.firmware.toUpperCase()}, ${plan.grubPackage} ${facts.grubVersion}, root ${facts.root.fsType} on ${facts.root.source}`);

  // 2. The adoption env: GRUB boots no image until a trial is set.
  const env = new GrubBootloader({ dir: envDir, tryClearedBy: plan.tryClearedBy, reason: plan.envReason });
  const state = await env.read().catch(() => null);
  if (state?.defaultImage) {
    throw new IbuError(
      'NOTHING_TO_DO',
      `This machine is already adopted: ${state.defaultImage} is committed in ${envDir}. Use 'upgradectl prepare' and 'apply' from the image.`,
    );
  }
  if (!state || state.adopted !== version) await env.initAdopted(version);

  const agentCfg = { ...derived, boot: { ...derived.boot, tryClearedBy: plan.tryClearedBy } };
  const agent = await openAgent(agentCfg, { json: o.json, log: o.log, seedFromSystemRoot: true });
  // A trial that never came back (power cut, panic): record it before preparing again.
  const { journal } = await readJournal(images.root);
  if (journal.state === 'applying') await agent.apply({ now: true, force: true });

  // 3. Prepare as any upgrade, seeded from the live root.
  const prepared = await agent.prepare(version);
  if (prepared.outcome !== 'prepared') throw new IbuError('INTERNAL', `adopt: prepare ended '${prepared.outcome}': ${prepared.message}`);

  // 4. Configuration from the live system (re-running is harmless: every rule is idempotent).
  const rules = [...(await adoptMigrationRules(cfg.systemRoot)), ...cfg.migration];
  const migration = await withImageMounted(images.image(version), images.mount, async (root) => {
    const changed = await migrateTree(rules, cfg.systemRoot, root);
    await writeImageConfig(o.configFile, path.join(root, 'etc/ibu/agent.json'), plan);
    changed.push({ path: '/etc/ibu/agent.json', strategy: 'copy', action: 'written', detail: 'hostMount /host, boot.envDir /host/boot/ibu' });
    return changed;
  });
  for (const c of migration) o.log(`migrate ${c.path} (${c.strategy}): ${c.action}${c.detail ? ` — ${c.detail}` : ''}`);

  // 5. GRUB: the distribution's own generator, with the ibu script first.
  // A read-only image (usr/lib/ibu/readonly) is mounted ro with its /etc and /var on the host; any other is the machine's writable root.
  const rootMode = isReadonlyImage(images.image(version)) ? 'ro' : 'rw';
  const grub = await installGrubIntegration(cfg.systemRoot, rootMode, o.updateGrub);
  o.log(`installed ${grub.script} (image root ${rootMode}); grub.cfg regenerated`);
  // GRUB reads grub.cfg (on /boot) and the env (on the root fs) without replaying their journals.
  for (const dir of new Set([path.join(cfg.systemRoot, 'boot/grub'), host])) {
    if (await fsp.stat(dir).catch(() => null)) o.log(await checkpointFilesystem(dir, cfg.checkpoint));
  }

  // 6. Apply as any upgrade: try_image, reboot.
  const applied = await agent.apply({ now: true, force: true });
  return {
    outcome: applied.outcome,
    message: o.noReboot ? `${version} is installed and set to boot once as a trial; reboot to start it.` : applied.message,
    version,
    plan,
    ...(prepared.download ? { download: prepared.download } : {}),
    migration,
    grub: { script: grub.script },
  };
}

/** The agent config inside the image: the conventional one, with the host partition at /host. */
async function writeImageConfig(src: string, dst: string, plan: AdoptPlan): Promise<void> {
  const raw = JSON.parse(await fsp.readFile(src, 'utf8')) as Record<string, unknown>;
  for (const k of ['imagesDir', 'systemRoot', 'runningVersion', 'cmdlineFile']) delete raw[k];
  raw.hostMount = '/host';
  const boot = { ...((raw.boot as Record<string, unknown> | undefined) ?? {}) };
  boot.envDir = path.join('/host', ADOPT_ENV_DIR);
  if (plan.tryClearedBy === 'initramfs') boot.tryClearedBy = 'initramfs';
  raw.boot = boot;
  await fsp.mkdir(path.dirname(dst), { recursive: true });
  const tmp = `${dst}.ibu-adopt.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(raw, null, 2) + '\n', { mode: 0o600 });
  await fsp.rename(tmp, dst);
}

async function allocated(p: string): Promise<number> {
  const s = await fsp.stat(p).catch(() => null);
  return s ? s.blocks * 512 : 0;
}

/** `upgradectl adopt --finalize`: the conventional system is no longer GRUB's last resort. */
export async function finalizeAdoption(cfg: AgentConfig): Promise<{ message: string }> {
  const envDir = cfg.boot.envDir ?? path.join(cfg.hostMount, ADOPT_ENV_DIR);
  const env = new GrubBootloader({ dir: envDir, tryClearedBy: cfg.boot.tryClearedBy ?? 'grub' });
  const st = await env.read();
  if (!st.adopted) return { message: `Nothing to finalize: ${envDir} names no adoption in progress.` };
  if (!st.defaultImage) {
    throw new IbuError(
      'NOTHING_TO_DO',
      `${st.adopted} is not committed yet; finalize after its trial boot passed its health checks (the conventional system is the only way back until then).`,
    );
  }
  const w = await env.finalizeAdoption();
  if (w.created) await checkpointFilesystem(envDir, cfg.checkpoint);
  return {
    message:
      `Adoption finalized: GRUB boots only the images now (${st.defaultImage} committed); ` +
      'the conventional system is no longer a boot entry of last resort.',
  };
}
