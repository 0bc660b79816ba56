import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../util/atomic.js';
import { IbuError, isIbuError, isPolicyAnswer, withContext } from '../errors.js';
import type { Bootloader, BootState } from '../boot/bootloader.js';
import type { CheckinResponse, DeviceEventType } from '../fleet/protocol.js';
import type { Store } from '../store/store.js';
import { assertVersion } from '../version.js';
import type { AgentContext } from './agent-context.js';
import { checkApplyGates, type ApplyOptions } from './apply-gates.js';
import { checkIn } from './checkin.js';
import { checkpointFilesystem, thawLeftovers } from './checkpoint.js';
import { CheckpointedBootloader } from './checkpointed-bootloader.js';
import type { CommandResult, End } from './command-result.js';
import type { AgentConfig } from './config.js';
import { crashPoint } from './crash-point.js';
import { bytesToAllocate } from './disk-policy.js';
import { downloadImage, type DeltaApplier } from './download.js';
import { enrollDevice, type EnrollResult } from './enroll.js';
import { flushEvents, queueUpgradeEvent } from './events.js';
import { ImagesDir } from './images-dir.js';
import { JournalFile, type Journal } from './journal.js';
import { ManifestCache } from './manifest-cache.js';
import { upgradeEtc } from './etc-upgrade.js';
import { migrateTree, unmountStale, withImageMounted } from './migration.js';
import { reboot, reportEscalation } from './reboot.js';
import { chooseRebootMethod } from './reboot-method.js';
import { bootId, gatherSwitchFacts, loadKexec, mountNextRoot, unloadSwitch } from './switch.js';
import { runningVersion, trialBoot } from './running-version.js';
import { healBoot, type BootHealthPlan } from './boot-health.js';
import type { ServerClient } from './server-client.js';
import { reserveSpace } from './space-reservation.js';
import { exists, fsckStaged, installStaged, stagedIdentity, verifyStaged } from './staged-image.js';
import { nextStep, type DeviceFacts, type Intent, type Step } from './state-machine.js';
import { readStatus, type AgentStatus } from './status.js';
import { resolveTarget } from './target.js';
import { checkTrialHealth, commitTrial, recordFallback, revertTrial } from './trial-outcome.js';

export type { DeltaApplier } from './download.js';
export type { CommandResult } from './command-result.js';

export interface AgentDeps {
  cfg: AgentConfig;
  bootloader: Bootloader;
  server: ServerClient | null;
  /** Release manifests and chunks (the server's /v1 routes or a configured store). */
  store: Store | null;
  applyDelta?: DeltaApplier;
  /** The encoders this device can re-encode with, as the delta route's `?encoders=` (src/server/recompress-deltas.ts). */
  deltaEncoders?: () => Promise<string>;
  log?: (line: string) => void;
  /** Draw progress bars (a TTY and no --json). */
  progress?: boolean;
  now?: () => Date;
  /** Seed downloads from the files of cfg.systemRoot (upgradectl adopt: a conventional system has no image to seed from). */
  seedFromSystemRoot?: boolean;
}

const DEFAULT_MAX_STEPS = 64;

/**
 * The executor around the pure state machine: gather facts, ask nextStep, perform the step,
 * record it in the journal (temp, fsync, rename), repeat. Every effect is idempotent or checked
 * against the facts first, so a SIGKILL or power loss between any two lines converges on re-run.
 * The steps themselves live in their own modules (target, space-reservation, staged-image, ...).
 */
export class Agent {
  private readonly ctx: AgentContext;
  private extra: Partial<CommandResult> = {};

  constructor(private readonly d: AgentDeps) {
    const dir = new ImagesDir(d.cfg.imagesDir);
    this.ctx = {
      cfg: d.cfg,
      dir,
      boot: new CheckpointedBootloader(d.bootloader, d.cfg.checkpoint),
      server: d.server,
      store: d.store,
      journal: new JournalFile(d.cfg.imagesDir),
      manifests: new ManifestCache(dir, d.store, { keyring: d.cfg.keyring, channel: d.cfg.channel }),
      log: d.log ?? ((l) => process.stderr.write(l + '\n')),
      now: d.now ?? (() => new Date()),
      facts: () => this.facts(),
    };
  }

  get cfg(): AgentConfig {
    return this.d.cfg;
  }
  private get j(): Journal {
    return this.ctx.journal.j;
  }
  private get log(): (line: string) => void {
    return this.ctx.log;
  }

  // ---- facts -------------------------------------------------------------------------------
  private async readBoot(running: string | null): Promise<BootState> {
    try {
      return await this.d.bootloader.read();
    } catch (err) {
      // Both env copies unusable: rebuilt with the committed image the agent knew, and reported.
      if (isIbuError(err, 'BOOTENV_INVALID') && (await this.heal(running)).rebuild) return this.d.bootloader.read();
      throw err;
    }
  }

  /** boot-health.ts: mark the boot good, repair the env, report a fallback. */
  private async heal(running: string | null): Promise<BootHealthPlan> {
    const j = this.j;
    const upgrading = j.target?.version === running && ['applying', 'trial', 'rolled-back'].includes(j.state);
    return healBoot(this.ctx, running, upgrading || (await trialBoot(this.cfg)));
  }

  async facts(): Promise<DeviceFacts> {
    const running = await runningVersion(this.cfg);
    const boot = await this.readBoot(running);
    const { dir } = this.ctx;
    const installed = await dir.installed();
    return {
      running,
      boot: { defaultImage: boot.defaultImage, tryImage: boot.tryImage },
      installed,
      partials: await dir.stagedVersions(),
      bootId: await bootId(),
    };
  }

  // ---- journal and events ------------------------------------------------------------------
  private async load(): Promise<void> {
    await fsp.mkdir(this.ctx.dir.ibu, { recursive: true });
    const thawed = await thawLeftovers();
    for (const t of thawed) this.log(`thawed ${t}, left frozen by an interrupted run`);
    await this.ctx.journal.load(this.log);
  }

  private record(patch: Partial<Journal>): Promise<void> {
    return this.ctx.journal.record(patch);
  }

  private queueEvent(type: DeviceEventType, from: string | null, to: string | null, error?: { code: string; message: string }): void {
    queueUpgradeEvent(this.ctx.journal, this.ctx.now(), type, from, to, error);
  }

  /** Delivers queued events; what fails stays queued for the next run. */
  flushEvents(): Promise<void> {
    return flushEvents(this.ctx.journal, this.ctx.server, this.log);
  }

  // ---- the loop ----------------------------------------------------------------------------
  private async drive(intent: Intent, opts: ApplyOptions = {}): Promise<CommandResult> {
    await this.load();
    if (intent.kind === 'confirm') await this.heal(await runningVersion(this.cfg));
    await reportEscalation(this.ctx);
    await this.flushEvents();
    this.extra = {};
    let gatesChecked = false;
    let running: string | null = null;
    try {
      for (let i = 0; i < DEFAULT_MAX_STEPS; i++) {
        const f = await this.facts();
        running = f.running;
        const step = nextStep(this.j, f, intent);
        if (step.kind === 'done') return this.result(step.outcome, step.message, f);
        if (step.kind === 'fail') throw new IbuError(step.code, step.message);
        if (intent.kind === 'apply' && !gatesChecked) {
          await checkApplyGates(this.ctx, opts);
          gatesChecked = true;
        }
        crashPoint(`step ${step.kind}`);
        const end = await this.perform(step, f, intent, opts);
        if (step.kind === 'resolve-target' && this.j.target && intent.kind === 'prepare') intent = { kind: 'prepare', version: this.j.target.version };
        if (end) return this.result(end.outcome, end.message, await this.facts());
      }
      throw new IbuError(
        'INTERNAL',
        `The agent did not settle after ${DEFAULT_MAX_STEPS} steps (state ${this.j.state}, step ${this.j.step}); ` +
          `this is a bug, please report it with ${this.ctx.dir.journal}.`,
      );
    } catch (err) {
      const e = err instanceof IbuError ? err : withContext(err, `${intent.kind} failed`);
      // Policy answers (window, inhibitor, nothing to do) are not failures worth recording.
      if (!isPolicyAnswer(e.code)) {
        this.j.lastError = { code: e.code, message: e.message, at: this.ctx.now().toISOString(), step: this.j.step ?? undefined };
        if (intent.kind === 'prepare') this.queueEvent('prepare-failed', running, this.j.target?.version ?? null, { code: e.code, message: e.message });
        await this.ctx.journal.save().catch(() => {});
        await this.flushEvents().catch(() => {});
      }
      throw e;
    }
  }

  private result(outcome: CommandResult['outcome'], message: string, f: DeviceFacts): CommandResult {
    const migration = this.j.migration && this.j.state !== 'committed' ? { migration: this.j.migration } : {};
    return { outcome, message, state: this.j.state, target: this.j.target?.version ?? null, running: f.running, ...migration, ...this.extra };
  }

  private async perform(step: Exclude<Step, { kind: 'done' } | { kind: 'fail' }>, f: DeviceFacts, intent: Intent, opts: ApplyOptions): Promise<End | void> {
    switch (step.kind) {
      case 'resolve-target':
        return resolveTarget(this.ctx, f, intent.kind === 'prepare' ? intent.version : undefined);
      case 'reserve-space':
        this.extra.removed = await reserveSpace(this.ctx, f);
        return;
      case 'download':
        return this.download(f);
      case 'verify':
        return verifyStaged(this.ctx);
      case 'fsck':
        return fsckStaged(this.ctx);
      case 'install':
        return installStaged(this.ctx);
      case 'mark-prepared':
        await fsp.rm(this.ctx.dir.staging, { recursive: true, force: true });
        await this.record({ state: 'prepared', step: null, lastError: null });
        return;
      case 'migrate':
        return this.migrate(f);
      case 'checkpoint':
        this.log(await checkpointFilesystem(this.cfg.imagesDir, this.cfg.checkpoint));
        await this.record({ step: 'checkpoint' });
        return;
      case 'choose-method': {
        const target = this.j.target!.version;
        const wanted = opts.method ?? this.cfg.reboot.method;
        const choice = chooseRebootMethod(wanted, await gatherSwitchFacts(this.ctx, f.running, target));
        this.log(`switch into ${target} by ${choice.method} (asked: ${wanted}): ${choice.reason}`);
        await this.record({ step: 'choose-method', switch: { ...choice, bootId: f.bootId ?? null } });
        return;
      }
      case 'load-switch': {
        const sw = this.j.switch!;
        const target = this.j.target!.version;
        if (sw.method === 'kexec') this.log(`kexec loaded ${target}: ${await loadKexec(this.ctx, target)}`);
        else {
          await mountNextRoot(this.ctx, target);
          this.log(`${target} mounted at /run/nextroot for soft-reboot`);
        }
        await this.record({ step: 'load-switch', switch: { ...sw, bootId: f.bootId ?? null } });
        return;
      }
      case 'set-try':
        await this.ctx.boot.setTry(this.j.target!.version);
        await this.record({ step: 'set-try' });
        return;
      case 'reboot':
        return reboot(this.ctx, step.why, step.why === 'apply' ? (this.j.switch?.method ?? 'reboot') : 'reboot');
      case 'health': {
        const { health, end } = await checkTrialHealth(this.ctx, f);
        if (health) this.extra.health = health;
        return end;
      }
      case 'commit':
        return commitTrial(this.ctx, f);
      case 'revert':
        return revertTrial(this.ctx, f, step.reason, 'rolled-back');
      case 'record-fallback':
        return recordFallback(this.ctx, f);
      case 'cancel-try': {
        if (f.boot.tryImage) await this.ctx.boot.clearTry();
        if (this.j.switch) await unloadSwitch(this.j.switch.method);
        await this.record({ state: 'prepared', step: null, switch: null });
        return { outcome: 'cancelled', message: `The pending trial of ${this.j.target?.version} was cancelled; it stays prepared.` };
      }
      case 'rollback-committed': {
        const from = f.running;
        this.j.switch = null; // this rollback is a plain reboot, not the last upgrade's switch
        await this.ctx.boot.commit(step.to);
        this.queueEvent('rolled-back', from, step.to);
        await this.record({ state: 'rolled-back', step: 'revert', target: { version: from!, fromVersion: step.to }, previous: null });
        return reboot(this.ctx, 'revert');
      }
    }
  }

  // ---- prepare -----------------------------------------------------------------------------
  private async download(f: DeviceFacts): Promise<void> {
    const { dir } = this.ctx;
    const target = this.j.target!.version;
    const out = dir.staged(target);
    await fsp.mkdir(dir.staging, { recursive: true });
    if (!(await exists(out))) {
      const m = await this.ctx.manifests.get(target);
      const running = f.running && f.installed.includes(f.running) ? f.running : null;
      const def = f.boot.defaultImage && f.installed.includes(f.boot.defaultImage) ? f.boot.defaultImage : null;
      const res = await downloadImage(
        {
          manifest: m,
          out,
          from: running ? { version: running, image: dir.image(running) } : null,
          seeds: def ? [dir.image(def)] : [],
          dir,
          imageBytes: bytesToAllocate(m.chunks, 4096),
          protect: [f.running, f.boot.defaultImage, f.boot.tryImage].filter((x): x is string => !!x),
          ...(this.d.seedFromSystemRoot ? { liveRoot: this.cfg.systemRoot } : {}),
        },
        {
          cfg: this.cfg,
          server: this.d.server,
          store: this.d.store,
          keyring: () => this.ctx.manifests.keyring(),
          applyDelta: this.d.applyDelta,
          deltaEncoders: this.d.deltaEncoders,
          log: this.log,
          progress: this.d.progress,
        },
      );
      this.extra.download = { ...res };
      // Every transport hashed the whole image against the signed manifest before writing `out`.
      this.j.target = { ...this.j.target!, method: res.method, staged: await stagedIdentity(out) };
    }
    await this.record({ step: 'download' });
  }

  // ---- apply -------------------------------------------------------------------------------
  private async migrate(f: DeviceFacts): Promise<void> {
    const target = this.j.target!.version;
    if (this.j.state === 'prepared') {
      this.queueEvent('apply-started', f.running, target);
      await this.record({ state: 'applying', step: null, previous: f.boot.defaultImage, migration: undefined, switch: null });
    }
    let changed: NonNullable<Journal['migration']>['changed'] = [];
    const mnt = this.ctx.dir.mount;
    const etc = await upgradeEtc({
      dir: this.ctx.dir,
      systemRoot: this.cfg.systemRoot,
      rules: this.cfg.etc.rules,
      running: f.running,
      installed: f.installed,
      target,
    }).catch((err) => {
      throw withContext(err, `merging /etc into ${target}`, 'MIGRATION_FAILED');
    });
    if (etc) {
      // a read-only image: /etc is its overlay layer, written by the merge; the migration rules are for writable images
      changed = etc.changed;
      for (const c of changed) this.log(`etc ${c.path} (${c.strategy}): ${c.action} — ${c.detail}`);
      if (!etc.threeWay) this.log(`etc: ${f.running} is not a read-only image; the device's /etc was kept wherever it differs from ${target}'s`);
      if (etc.conflicts.length > 0) {
        const lines = etc.conflicts.map((c) => `/etc/${c.path} (${c.conflict!.rule}): ${c.conflict!.detail}`);
        const aside = etc.saved.length > 0 ? ` The device's losing entries are saved in ${this.ctx.dir.etcLayer(target).aside}.` : '';
        let message = `${etc.conflicts.length} path(s) of /etc changed on the device and in ${target}: ${lines.join('; ')}.${aside}`;
        if (message.length > 3800) message = `${message.slice(0, 3700)}… (${etc.conflicts.length} in all; upgradectl status lists them)`;
        this.queueEvent('etc-conflict', f.running, target, { code: 'ETC_CONFLICT', message });
      }
    } else if (this.cfg.migration.length > 0 && (await this.ctx.manifests.get(target)).verity) {
      // a verity image file is immutable: writing migrated files into it would fail its tree at boot
      this.log(`migration rules not applied: ${target} is verified by dm-verity; build it with readonly: true to keep /etc on the host`);
    } else if (this.cfg.migration.length > 0) {
      changed = await withImageMounted(this.ctx.dir.image(target), mnt, (root) => migrateTree(this.cfg.migration, this.cfg.systemRoot, root));
      for (const c of changed) this.log(`migrate ${c.path} (${c.strategy}): ${c.action}${c.detail ? ` — ${c.detail}` : ''}`);
    } else {
      await unmountStale(mnt).catch(() => false);
    }
    await this.writeVerityRecord(target);
    await this.record({ step: 'migrate', migration: { changed } });
  }

  /**
   * The boot environment's verity record of `v` (ImagesDir.verityRecord): root hash and hash
   * offset from the signed manifest, which the initramfs opens dm-verity with. Written before
   * set-try, so the trial boot already runs verified; removed for an image without a tree.
   */
  private async writeVerityRecord(v: string): Promise<void> {
    const m = await this.ctx.manifests.get(v);
    const file = this.ctx.dir.verityRecord(v);
    if (!m.verity) {
      await fsp.rm(file, { force: true });
      return;
    }
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await writeFileAtomic(file, `${m.verity.rootHash} ${m.verity.hashOffset}\n`);
    this.log(`verity: ${v} boots through dm-verity, root hash ${m.verity.rootHash}`);
  }

  // ---- commands ----------------------------------------------------------------------------
  prepare(version?: string): Promise<CommandResult> {
    return this.drive({ kind: 'prepare', version });
  }
  apply(opts: ApplyOptions = {}): Promise<CommandResult> {
    return this.drive({ kind: 'apply' }, opts);
  }
  confirm(): Promise<CommandResult> {
    return this.drive({ kind: 'confirm' });
  }
  rollback(): Promise<CommandResult> {
    return this.drive({ kind: 'rollback' });
  }

  /** Writes a fresh boot environment naming `version` (first install or repair). */
  async initBoot(version: string): Promise<void> {
    assertVersion(version);
    const img = this.ctx.dir.image(version);
    if (!(await exists(img))) throw new IbuError('NOT_FOUND', `${img} does not exist; install the image first.`);
    await this.ctx.boot.init(version);
  }

  status(): Promise<AgentStatus> {
    return readStatus(this.cfg, this.d.bootloader);
  }

  enroll(o: { secret?: string; group?: string }): Promise<EnrollResult> {
    return enrollDevice(this.cfg, this.d.server, o);
  }

  /** `upgradectl check`: one check-in, the server's answer as is. */
  async check(): Promise<CheckinResponse> {
    if (!this.d.server) throw new IbuError('CONFIG_INVALID', 'No server is configured (server.url in the agent config).');
    await this.load();
    await this.flushEvents();
    return (await checkIn(this.ctx, await this.facts()))!;
  }
}
