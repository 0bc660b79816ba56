import { createHash } from 'node:crypto';
import { promises as fsp, constants as fsc } from 'node:fs';
import * as path from 'node:path';
import { IbuError, isIbuError, withContext } from '../errors.js';
import { fsyncDir, writeFileAtomic } from '../util/atomic.js';
import { run } from '../util/exec.js';
import type { Bootloader, BootState } from '../boot/bootloader.js';
import type { CheckinResponse, DeviceEvent, DeviceEventType, MaintenanceWindow } from '../fleet/protocol.js';
import { Keyring } from '../release/keyring.js';
import { parseAndVerifyManifest } from '../release/manifest.js';
import type { Manifest } from '../release/types.js';
import { assertVersion, compareVersions, isValidVersion } from '../version.js';
import { manifestPath } from '../store/layout.js';
import type { Store } from '../store/store.js';
import type { AgentConfig } from './config.js';
import { checkpointFilesystem, thawLeftovers } from './checkpoint.js';
import { crashPoint } from './crash-point.js';
import { bytesToAllocate, freeBytes, noSpaceError, planCleanup, type ImageFile } from './disk-policy.js';
import { runHealthChecks, type HealthResult } from './health.js';
import { waitForInhibitors } from './inhibitors.js';
import { emptyJournal, readJournal, writeJournal, type Journal } from './journal.js';
import { migrateTree, unmountStale, withImageMounted } from './migration.js';
import { downloadImage, type DeltaApplier } from './download.js';
import type { ServerClient } from './server-client.js';
import { nextStep, type DeviceFacts, type Intent, type Outcome, type Step } from './state-machine.js';
import { inWindow, nextOpening } from './window.js';

export type { DeltaApplier } from './download.js';

export interface AgentDeps {
  cfg: AgentConfig;
  bootloader: Bootloader;
  server: ServerClient | null;
  /** Release manifests and chunks (the server's /v1 routes or a configured store). */
  store: Store | null;
  applyDelta?: DeltaApplier;
  log?: (line: string) => void;
  /** Draw progress bars (a TTY and no --json). */
  progress?: boolean;
  now?: () => Date;
}

export interface CommandResult {
  outcome: Outcome;
  message: string;
  state: Journal['state'];
  target: string | null;
  running: string | null;
  migration?: Journal['migration'];
  health?: HealthResult[];
  download?: Record<string, unknown>;
  removed?: string[];
}

const DEFAULT_MAX_STEPS = 64;

/**
 * The executor around the pure state machine: gather facts, ask nextStep, perform the step,
 * record it in the journal (temp, fsync, rename), repeat. Every effect is idempotent or checked
 * against the facts first, so a SIGKILL or power loss between any two lines converges on re-run.
 */
export class Agent {
  private j: Journal = emptyJournal();
  private readonly log: (line: string) => void;
  private readonly now: () => Date;
  private keyring: Keyring | null = null;
  private checkin: CheckinResponse | null = null;
  private extra: Partial<CommandResult> = {};

  constructor(private readonly d: AgentDeps) {
    this.log = d.log ?? ((l) => process.stderr.write(l + '\n'));
    this.now = d.now ?? (() => new Date());
  }

  get cfg(): AgentConfig {
    return this.d.cfg;
  }

  // ---- paths -------------------------------------------------------------------------------
  imagePath(v: string): string {
    return path.join(this.cfg.imagesDir, `${v}.img`);
  }
  private get ibuDir(): string {
    return path.join(this.cfg.imagesDir, '.ibu');
  }
  private get stagingDir(): string {
    return path.join(this.ibuDir, 'staging');
  }
  /** A finished, verified download awaiting fsck and the rename into place. */
  private stagedPath(v: string): string {
    return path.join(this.stagingDir, `${v}.img`);
  }
  private manifestCache(v: string): string {
    return path.join(this.ibuDir, 'manifests', `${v}.json`);
  }
  private deltaPath(from: string, to: string): string {
    return path.join(this.stagingDir, `${from}_${to}.ibudelta`);
  }
  private get mountDir(): string {
    return path.join(this.ibuDir, 'mnt');
  }

  // ---- facts -------------------------------------------------------------------------------
  async runningVersion(): Promise<string | null> {
    if (this.cfg.runningVersion) return this.cfg.runningVersion;
    const text = await fsp.readFile(this.cfg.cmdlineFile, 'utf8').catch(() => '');
    const m = /(?:^|\s)loop=\S*?([^/\s]+)\.img(?=\s|$)/.exec(text);
    return m && isValidVersion(m[1]!) ? m[1]! : null;
  }

  private async readBoot(running: string | null): Promise<BootState> {
    try {
      return await this.d.bootloader.read();
    } catch (err) {
      // Both env copies unusable: the image running now is known to boot, so it becomes the default.
      if (isIbuError(err, 'BOOTENV_INVALID') && running && (await exists(this.imagePath(running)))) {
        this.log(`boot environment unusable (${err.message}); rewriting it with the running image ${running} as the default`);
        const w = await this.d.bootloader.init(running);
        if (w.created) await checkpointFilesystem(this.d.bootloader.info.dir, this.cfg.checkpoint);
        return this.d.bootloader.read();
      }
      throw err;
    }
  }

  async facts(): Promise<DeviceFacts> {
    const running = await this.runningVersion();
    const boot = await this.readBoot(running);
    const names = await fsp.readdir(this.cfg.imagesDir).catch(() => [] as string[]);
    const installed = names.filter((n) => n.endsWith('.img') && isValidVersion(n.slice(0, -4))).map((n) => n.slice(0, -4));
    const staged = await fsp.readdir(this.stagingDir).catch(() => [] as string[]);
    const partials = staged.filter((n) => n.endsWith('.img') && isValidVersion(n.slice(0, -4))).map((n) => n.slice(0, -4));
    return { running, boot: { defaultImage: boot.defaultImage, tryImage: boot.tryImage }, installed: installed.sort(compareVersions), partials };
  }

  // ---- journal -----------------------------------------------------------------------------
  private async load(): Promise<void> {
    await fsp.mkdir(this.ibuDir, { recursive: true });
    const thawed = await thawLeftovers();
    for (const t of thawed) this.log(`thawed ${t}, left frozen by an interrupted run`);
    const r = await readJournal(this.cfg.imagesDir);
    this.j = r.journal;
    if (r.recovered) {
      this.log(r.journal.lastError!.message);
      await this.save();
    }
  }

  private async save(): Promise<void> {
    await writeJournal(this.cfg.imagesDir, this.j);
  }

  /** Records a completed step (or a new state) durably; the crash harness kills around it. */
  private async record(patch: Partial<Journal>): Promise<void> {
    // A kill here: the effect happened but is not recorded. (A kill right after the record is the
    // same boundary as the next step's crash point.)
    crashPoint(`before-record ${patch.state ?? ''}${patch.step ?? ''}`);
    Object.assign(this.j, patch);
    await this.save();
  }

  private queueEvent(type: DeviceEventType, from: string | null, to: string | null, error?: { code: string; message: string }): void {
    this.j.pendingEvents.push({ type, fromVersion: from ?? 'unknown', toVersion: to ?? 'unknown', at: this.now().toISOString(), ...(error ? { error } : {}) });
  }

  /** Delivers queued events; what fails stays queued for the next run. */
  async flushEvents(): Promise<void> {
    if (!this.d.server || this.j.pendingEvents.length === 0) return;
    const left: DeviceEvent[] = [];
    for (const ev of this.j.pendingEvents) {
      if (left.length > 0) {
        left.push(ev);
        continue;
      }
      try {
        await this.d.server.event(ev);
      } catch (err) {
        this.log(`could not report ${ev.type} to the server (${(err as Error).message}); will retry`);
        left.push(ev);
      }
    }
    if (left.length !== this.j.pendingEvents.length) {
      this.j.pendingEvents = left;
      await this.save();
    }
  }

  // ---- the loop ----------------------------------------------------------------------------
  private async drive(intent: Intent, opts: { now?: boolean; force?: boolean } = {}): Promise<CommandResult> {
    await this.load();
    await this.flushEvents();
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
          await this.gates(opts);
          gatesChecked = true;
        }
        crashPoint(`step ${step.kind}`);
        const end = await this.perform(step, f, intent);
        if (step.kind === 'resolve-target' && this.j.target && intent.kind === 'prepare') intent = { kind: 'prepare', version: this.j.target.version };
        if (end) return this.result(end.outcome, end.message, await this.facts());
      }
      throw new IbuError('INTERNAL', `The agent did not settle after ${DEFAULT_MAX_STEPS} steps (state ${this.j.state}, step ${this.j.step}); this is a bug, please report it with ${path.join(this.ibuDir, 'state.json')}.`);
    } catch (err) {
      const e = err instanceof IbuError ? err : withContext(err, `${intent.kind} failed`);
      // Policy answers (window, inhibitor, nothing to do) are not failures worth recording.
      if (!['NOT_IN_WINDOW', 'INHIBITED', 'NOTHING_TO_DO', 'USAGE', 'CONFIG_INVALID'].includes(e.code)) {
        this.j.lastError = { code: e.code, message: e.message, at: this.now().toISOString(), step: this.j.step ?? undefined };
        if (intent.kind === 'prepare') this.queueEvent('prepare-failed', running, this.j.target?.version ?? null, { code: e.code, message: e.message });
        await this.save().catch(() => {});
        await this.flushEvents().catch(() => {});
      }
      throw e;
    }
  }

  private result(outcome: Outcome, message: string, f: DeviceFacts): CommandResult {
    return { outcome, message, state: this.j.state, target: this.j.target?.version ?? null, running: f.running, ...(this.j.migration && this.j.state !== 'committed' ? { migration: this.j.migration } : {}), ...this.extra };
  }

  private async perform(step: Exclude<Step, { kind: 'done' } | { kind: 'fail' }>, f: DeviceFacts, intent: Intent): Promise<{ outcome: Outcome; message: string } | void> {
    switch (step.kind) {
      case 'resolve-target':
        return this.resolveTarget(f, intent.kind === 'prepare' ? intent.version : undefined);
      case 'reserve-space':
        return this.reserveSpace(f);
      case 'download':
        return this.download(f);
      case 'verify':
        return this.verify();
      case 'fsck':
        return this.fsck();
      case 'install':
        return this.install();
      case 'mark-prepared':
        await fsp.rm(path.join(this.stagingDir), { recursive: true, force: true });
        await this.record({ state: 'prepared', step: null, lastError: null });
        return;
      case 'migrate':
        return this.migrate(f);
      case 'checkpoint':
        this.log(await checkpointFilesystem(this.cfg.imagesDir, this.cfg.checkpoint));
        await this.record({ step: 'checkpoint' });
        return;
      case 'set-try': {
        const target = this.j.target!.version;
        const w = await this.d.bootloader.setTry(target);
        if (w.created) await checkpointFilesystem(this.d.bootloader.info.dir, this.cfg.checkpoint);
            await this.record({ step: 'set-try' });
        return;
      }
      case 'reboot':
        return this.reboot(step.why);
      case 'health':
        return this.health(f);
      case 'commit':
        return this.commit(f);
      case 'revert':
        return this.revert(f, step.reason, 'rolled-back');
      case 'record-fallback': {
        const t = this.j.target?.version ?? null;
        const msg = `The trial boot of ${t} did not confirm; the device came back on ${f.running} by itself.`;
        this.queueEvent('rolled-back', t, f.running, { code: 'HEALTH_CHECK_FAILED', message: msg });
        await this.record({ state: 'rolled-back', step: 'revert', failedVersions: withFailed(this.j, t), lastError: { code: 'HEALTH_CHECK_FAILED', message: msg, at: this.now().toISOString() } });
        await this.flushEvents();
        await this.reportState();
        return { outcome: 'rolled-back', message: msg };
      }
      case 'cancel-try': {
        if (f.boot.tryImage) await this.d.bootloader.clearTry();
        await this.record({ state: 'prepared', step: null });
        return { outcome: 'cancelled', message: `The pending trial of ${this.j.target?.version} was cancelled; it stays prepared.` };
      }
      case 'rollback-committed': {
        const from = f.running;
        const w = await this.d.bootloader.commit(step.to);
        if (w.created) await checkpointFilesystem(this.d.bootloader.info.dir, this.cfg.checkpoint);
        this.queueEvent('rolled-back', from, step.to);
        await this.record({ state: 'rolled-back', step: 'revert', target: { version: from!, fromVersion: step.to }, previous: null });
        return this.reboot('revert');
      }
    }
  }

  // ---- prepare -----------------------------------------------------------------------------
  private async getKeyring(): Promise<Keyring> {
    this.keyring ??= await Keyring.load(this.cfg.keyring);
    return this.keyring;
  }

  private async doCheckin(f: DeviceFacts, wantRebootLease = false): Promise<CheckinResponse | null> {
    if (!this.d.server) return null;
    const free = await freeBytes(this.cfg.imagesDir).catch(() => undefined);
    this.checkin = await this.d.server.checkin({
      version: f.running ?? 'unknown',
      state: this.j.state,
      trial: f.running !== null && f.running !== f.boot.defaultImage,
      committedVersion: f.boot.defaultImage ?? undefined,
      preparedVersion: this.j.state === 'prepared' ? this.j.target?.version : undefined,
      freeBytes: free,
      lastError: this.j.lastError ? { code: this.j.lastError.code, message: this.j.lastError.message } : null,
      wantRebootLease,
    });
    return this.checkin;
  }

  /** A best-effort check-in so the server sees the new version and state at once (not at the next timer run). */
  private async reportState(): Promise<void> {
    if (!this.d.server) return;
    try {
      await this.doCheckin(await this.facts());
    } catch (err) {
      this.log(`could not check in (${(err as Error).message}); the next run will`);
    }
  }

  /** Reads the cached manifest and verifies it against the keyring again (it sits on a writable disk). */
  private async cachedManifest(v: string): Promise<Manifest> {
    const bytes = await fsp.readFile(this.manifestCache(v)).catch(() => null);
    if (bytes) return parseAndVerifyManifest(bytes, await this.getKeyring(), `the cached manifest of ${v}`).manifest;
    return this.fetchManifest(v);
  }

  private async fetchManifest(v: string): Promise<Manifest> {
    if (!this.d.store) throw new IbuError('CONFIG_INVALID', 'No release source: set server.url or download.store in the agent config.');
    const bytes = await this.d.store.getFile(manifestPath(v)).catch((err) => {
      if (isIbuError(err, 'NOT_FOUND')) throw new IbuError('RELEASE_NOT_FOUND', `Release ${v} is not in ${this.d.store!.location}; check the version.`, { cause: err });
      throw err;
    });
    const { manifest } = parseAndVerifyManifest(bytes, await this.getKeyring(), `the manifest of ${v} from ${this.d.store.location}`);
    if (manifest.version !== v) throw new IbuError('MANIFEST_INVALID', `The manifest fetched for ${v} is for ${manifest.version}; the store is inconsistent.`);
    if (manifest.channel !== this.cfg.channel) throw new IbuError('MANIFEST_INVALID', `Release ${v} is on channel '${manifest.channel}', this device follows '${this.cfg.channel}'.`);
    await fsp.mkdir(path.dirname(this.manifestCache(v)), { recursive: true });
    await writeFileAtomic(this.manifestCache(v), bytes);
    return manifest;
  }

  private async resolveTarget(f: DeviceFacts, wanted: string | undefined): Promise<{ outcome: Outcome; message: string } | void> {
    let target = wanted;
    if (target === undefined) {
      const r = await this.doCheckin(f);
      if (!r && !this.d.server) throw new IbuError('USAGE', 'No server is configured; pass --version VERSION to prepare a specific release.');
      target = r?.target?.version;
      if (!target) return { outcome: 'up-to-date', message: `The server has no upgrade for ${f.running ?? 'this device'}.` };
      // An unattended device must not loop through the same failing trial.
      if (this.j.failedVersions?.includes(target)) {
        return { outcome: 'up-to-date', message: `${target} failed its trial boot on this device before; not retrying it by itself (run 'upgradectl prepare --version ${target}' to retry).` };
      }
    }
    assertVersion(target);
    if (f.running && target === f.running) return { outcome: 'up-to-date', message: `${target} is already running.` };
    if (f.running && compareVersions(target, f.running) < 0) {
      throw new IbuError('VERSION_DOWNGRADE', `Refusing to prepare ${target}: it is older than the running ${f.running}. Use 'upgradectl rollback' to go back to an installed image.`);
    }
    await this.fetchManifest(target);
    const prev = this.j.target?.version;
    if (prev && prev !== target && this.j.state === 'preparing') this.log(`switching the prepared target from ${prev} to ${target}`);
    if (f.installed.includes(target)) {
      await this.record({ state: 'prepared', step: null, target: { version: target, fromVersion: f.running }, lastError: null });
      return;
    }
    await this.record({ state: 'preparing', step: 'resolve-target', target: { version: target, fromVersion: f.running }, lastError: null });
  }

  /** Exact bytes the target still needs: the fs blocks its non-zero chunks touch, minus what the partial holds. */
  private async neededBytes(m: Manifest, blockSize: number): Promise<number> {
    const v = m.version;
    let have = 0;
    for (const p of [`${this.stagedPath(v)}.partial`, this.stagedPath(v)]) {
      const st = await fsp.stat(p).catch(() => null);
      if (st) have += st.blocks * 512;
    }
    return Math.max(0, bytesToAllocate(m.chunks, blockSize) - have);
  }

  private async reserveSpace(f: DeviceFacts): Promise<void> {
    const target = this.j.target!.version;
    const m = await this.cachedManifest(target);
    const st = await fsp.statfs(this.cfg.imagesDir);
    const needed = await this.neededBytes(m, Number(st.bsize));
    const files: ImageFile[] = [];
    for (const v of f.installed) files.push({ version: v, kind: 'image', allocated: await allocated(this.imagePath(v)) });
    const staged = await fsp.readdir(this.stagingDir).catch(() => [] as string[]);
    const byVersion = new Map<string, number>();
    for (const n of staged) {
      const v = /^(.+?)\.img(\.partial(\.journal)?)?$/.exec(n)?.[1] ?? /^.+_(.+)\.ibudelta(\.etag)?$/.exec(n)?.[1];
      if (v && v !== target) byVersion.set(v, (byVersion.get(v) ?? 0) + (await allocated(path.join(this.stagingDir, n))));
    }
    for (const [v, bytes] of byVersion) files.push({ version: v, kind: 'partial', allocated: bytes });
    const protect = [f.running, f.boot.defaultImage, f.boot.tryImage, target].filter((x): x is string => !!x);
    const plan = planCleanup({
      freeBytes: await freeBytes(this.cfg.imagesDir),
      neededBytes: needed,
      imageBytes: needed + (await allocated(`${this.stagedPath(target)}.partial`)),
      reserveBytes: this.cfg.space.reserveBytes,
      keepImages: this.cfg.space.keepImages,
      files,
      protect,
    });
    if (!plan.ok) throw noSpaceError(plan, this.cfg.imagesDir, target);
    const removed: string[] = [];
    for (const r of plan.remove) {
      if (protect.includes(r.version)) continue; // belt and braces: the plan never lists these
      if (r.kind === 'image') {
        await fsp.rm(this.imagePath(r.version), { force: true });
        await fsp.rm(this.manifestCache(r.version), { force: true });
        removed.push(`${r.version}.img`);
      } else {
        for (const n of staged) if (n.startsWith(`${r.version}.img`) || n.endsWith(`_${r.version}.ibudelta`) || n.endsWith(`_${r.version}.ibudelta.etag`)) await fsp.rm(path.join(this.stagingDir, n), { force: true });
        removed.push(`${r.version} (partial download)`);
      }
    }
    if (removed.length) {
      await fsyncDir(this.cfg.imagesDir);
      this.log(`disk policy removed ${removed.join(', ')}`);
    }
    this.extra.removed = removed;
    await this.record({ step: 'reserve-space' });
  }

  private async download(f: DeviceFacts): Promise<void> {
    const target = this.j.target!.version;
    const out = this.stagedPath(target);
    await fsp.mkdir(this.stagingDir, { recursive: true });
    if (!(await exists(out))) {
      const m = await this.cachedManifest(target);
      const running = f.running && f.installed.includes(f.running) ? f.running : null;
      const def = f.boot.defaultImage && f.installed.includes(f.boot.defaultImage) ? f.boot.defaultImage : null;
      const res = await downloadImage(
        {
          manifest: m,
          out,
          from: running ? { version: running, image: this.imagePath(running) } : null,
          seeds: def ? [this.imagePath(def)] : [],
          deltaFile: this.deltaPath(running ?? 'none', target),
          imageBytes: bytesToAllocate(m.chunks, 4096),
          protect: [f.running, f.boot.defaultImage, f.boot.tryImage].filter((x): x is string => !!x),
        },
        { cfg: this.cfg, server: this.d.server, store: this.d.store, keyring: () => this.getKeyring(), applyDelta: this.d.applyDelta, log: this.log, progress: this.d.progress },
      );
      this.extra.download = { ...res };
      this.j.target = { ...this.j.target!, method: res.method };
    }
    await this.record({ step: 'download' });
  }

  private async verify(): Promise<void> {
    const target = this.j.target!.version;
    const m = await this.cachedManifest(target);
    const file = this.stagedPath(target);
    const st = await fsp.stat(file);
    const sum = await sha256File(file);
    if (st.size !== m.image.size || sum !== m.image.sha256) {
      await fsp.rm(file, { force: true });
      throw new IbuError('IMAGE_HASH_MISMATCH', `The downloaded image ${target} does not match its signed manifest (sha256 ${sum}, expected ${m.image.sha256}); it was deleted and will be downloaded again on the next run.`);
    }
    await this.record({ step: 'verify' });
  }

  private async fsck(): Promise<void> {
    const target = this.j.target!.version;
    const file = this.stagedPath(target);
    const r = await run('e2fsck', ['-n', '-f', file], { allowFailure: true });
    if (r.code !== 0) {
      await fsp.rm(file, { force: true });
      throw new IbuError('IMAGE_FSCK_FAILED', `e2fsck -n found errors in ${target} (exit ${r.code}): ${r.stdout.trim().split('\n').slice(-3).join(' ')}; the image was deleted.`);
    }
    await this.record({ step: 'fsck' });
  }

  private async install(): Promise<void> {
    const target = this.j.target!.version;
    const final = this.imagePath(target);
    if (!(await exists(final))) {
      await fsp.rename(this.stagedPath(target), final);
      await fsyncDir(this.cfg.imagesDir);
    }
    await this.record({ step: 'install' });
  }

  // ---- apply -------------------------------------------------------------------------------
  private async gates(opts: { now?: boolean; force?: boolean }): Promise<void> {
    let window: MaintenanceWindow | null = this.cfg.window;
    if (this.d.server) {
      try {
        const f = await this.facts();
        const r = await this.doCheckin(f, true);
        if (!window && r) window = r.window;
        if (r && !r.rebootLease.granted && !opts.now) {
          throw new IbuError('INHIBITED', 'The server has not granted a reboot lease yet (too many devices of this group are rebooting); apply runs again later.');
        }
      } catch (err) {
        if (isIbuError(err, 'INHIBITED')) throw err;
        this.log(`could not ask the server for the window and a reboot lease (${(err as Error).message}); using the local config`);
      }
    }
    if (!opts.now && !inWindow(window, this.now())) {
      const next = window ? nextOpening(window, this.now()) : null;
      throw new IbuError('NOT_IN_WINDOW', `Not inside the maintenance window (${window!.timeZone}); it opens next at ${next?.toISOString() ?? 'an unknown time'}. Run again then, or use --now.`, {
        details: { nextOpening: next?.toISOString() ?? null },
      });
    }
    if (!opts.force) await waitForInhibitors(this.cfg.inhibitors, this.cfg.inhibitorWaitSeconds, this.cfg.pollSeconds, this.log);
  }

  private async migrate(f: DeviceFacts): Promise<void> {
    const target = this.j.target!.version;
    if (this.j.state === 'prepared') {
      this.queueEvent('apply-started', f.running, target);
      await this.record({ state: 'applying', step: null, previous: f.boot.defaultImage, migration: undefined });
    }
    let changed: NonNullable<Journal['migration']>['changed'] = [];
    if (this.cfg.migration.length > 0) {
      changed = await withImageMounted(this.imagePath(target), this.mountDir, (root) => migrateTree(this.cfg.migration, this.cfg.systemRoot, root));
      for (const c of changed) this.log(`migrate ${c.path} (${c.strategy}): ${c.action}${c.detail ? ` — ${c.detail}` : ''}`);
    } else {
      await unmountStale(this.mountDir).catch(() => false);
    }
    await this.record({ step: 'migrate', migration: { changed } });
  }

  private async reboot(why: 'apply' | 'revert'): Promise<{ outcome: Outcome; message: string }> {
    if (this.j.step !== 'reboot' && why === 'apply') await this.record({ step: 'reboot' });
    await this.flushEvents().catch(() => {});
    const { command, forceCommand, forceAfterSeconds } = this.cfg.reboot;
    this.log(`rebooting: ${command.join(' ')}`);
    await run(command[0]!, command.slice(1), { allowFailure: true });
    if (forceAfterSeconds > 0) {
      // A clean reboot ends this process; if we are still here, something hangs: force it.
      await new Promise((r) => setTimeout(r, forceAfterSeconds * 1000));
      this.log(`still running ${forceAfterSeconds} s after '${command.join(' ')}'; forcing: ${forceCommand.join(' ')}`);
      await run(forceCommand[0]!, forceCommand.slice(1), { allowFailure: true });
    }
    const target = this.j.target?.version;
    return { outcome: 'rebooting', message: why === 'apply' ? `Rebooting into ${target} for a trial boot.` : 'Rebooting into the committed image.' };
  }

  // ---- confirm / rollback ------------------------------------------------------------------
  private async health(f: DeviceFacts): Promise<{ outcome: Outcome; message: string } | void> {
    const running = f.running!;
    if (this.j.target?.version !== running) {
      return { outcome: 'not-trial', message: `${running} is running but is neither the committed default (${f.boot.defaultImage}) nor an upgrade this agent applied; not committing it. Reboot to return to ${f.boot.defaultImage}, or prepare and apply it.` };
    }
    await this.record({ state: 'trial', step: null });
    const results = await runHealthChecks(this.cfg.health.checks, this.cfg.health.deadlineSeconds, this.cfg.pollSeconds, this.log);
    this.extra.health = results;
    const failed = results.filter((r) => !r.ok);
    if (failed.length > 0) {
      const why = failed.map((r) => `${r.name}: ${r.detail}`).join('; ');
      return this.revert(f, `health checks failed on ${running}: ${why}`, 'upgrade-failed');
    }
    await this.record({ step: 'health' });
  }

  private async commit(f: DeviceFacts): Promise<{ outcome: Outcome; message: string }> {
    const running = f.running!;
    const w = await this.d.bootloader.commit(running);
    if (w.created) await checkpointFilesystem(this.d.bootloader.info.dir, this.cfg.checkpoint);
    this.queueEvent('upgrade-succeeded', this.j.target?.fromVersion ?? this.j.previous, running);
    await this.record({ state: 'committed', step: 'commit', lastError: null });
    await this.flushEvents();
    await this.reportState();
    return { outcome: 'committed', message: `${running} passed its health checks and is now the committed default.` };
  }

  private async revert(f: DeviceFacts, reason: string, event: 'upgrade-failed' | 'rolled-back'): Promise<{ outcome: Outcome; message: string }> {
    // On a trial boot the default still names the old image; make sure nothing else is pending.
    const st = await this.d.bootloader.read();
    if (st.tryImage) await this.d.bootloader.clearTry();
    const code = event === 'upgrade-failed' ? 'HEALTH_CHECK_FAILED' : 'ROLLED_BACK';
    this.queueEvent(event, f.running, st.defaultImage, event === 'upgrade-failed' ? { code, message: reason } : undefined);
    await this.record({
      state: 'rolled-back',
      step: 'revert',
      failedVersions: withFailed(this.j, f.running),
      lastError: event === 'upgrade-failed' ? { code, message: reason, at: this.now().toISOString() } : this.j.lastError,
    });
    this.log(reason);
    const r = await this.reboot('revert');
    return { outcome: 'rolled-back', message: `${reason}. ${r.message}` };
  }

  // ---- commands ----------------------------------------------------------------------------
  prepare(version?: string): Promise<CommandResult> {
    return this.drive({ kind: 'prepare', version });
  }
  apply(opts: { now?: boolean; force?: boolean } = {}): Promise<CommandResult> {
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
    if (!(await exists(this.imagePath(version)))) throw new IbuError('NOT_FOUND', `${this.imagePath(version)} does not exist; install the image first.`);
    const w = await this.d.bootloader.init(version);
    if (w.created) await checkpointFilesystem(this.d.bootloader.info.dir, this.cfg.checkpoint);
  }

  async status(): Promise<Record<string, unknown>> {
    const r = await readJournal(this.cfg.imagesDir).catch(() => ({ journal: emptyJournal() }));
    const j = r.journal;
    const running = await this.runningVersion();
    let boot: BootState | { error: string };
    try {
      boot = await this.d.bootloader.read();
    } catch (err) {
      boot = { error: (err as Error).message };
    }
    const names = await fsp.readdir(this.cfg.imagesDir).catch(() => [] as string[]);
    const images = [];
    for (const n of names.filter((x) => x.endsWith('.img') && isValidVersion(x.slice(0, -4))).sort((a, b) => compareVersions(a.slice(0, -4), b.slice(0, -4)))) {
      const st = await fsp.stat(path.join(this.cfg.imagesDir, n));
      images.push({ version: n.slice(0, -4), sizeBytes: st.size, allocatedBytes: st.blocks * 512 });
    }
    const def = 'error' in boot ? null : boot.defaultImage;
    return {
      running,
      committed: def,
      trial: running !== null && def !== null && running !== def,
      tryImage: 'error' in boot ? null : boot.tryImage,
      bootloader: { ...this.d.bootloader.info, ...('error' in boot ? { error: boot.error } : { source: boot.source, warnings: boot.warnings }) },
      images,
      freeBytes: await freeBytes(this.cfg.imagesDir).catch(() => null),
      prepared: j.state === 'prepared' ? (j.target?.version ?? null) : null,
      state: j.state,
      step: j.step,
      target: j.target,
      previous: j.previous,
      lastError: j.lastError,
      pendingEvents: j.pendingEvents.length,
      journal: path.join(this.ibuDir, 'state.json'),
    };
  }

  /**
   * `upgradectl enroll`: trades the enrollment secret (or a pre-authorization) for a device
   * token and stores it in `server.tokenFile` (mode 0600, written atomically).
   */
  async enroll(o: { secret?: string; group?: string }): Promise<{ deviceId: string; tokenFile: string }> {
    const s = this.cfg.server;
    if (!s || !this.d.server) throw new IbuError('CONFIG_INVALID', 'No server is configured (server.url and server.deviceId in the agent config).');
    if (!s.tokenFile) throw new IbuError('CONFIG_INVALID', 'Set server.tokenFile in the agent config: enroll stores the device token there.');
    const r = await this.d.server.enroll({ deviceId: s.deviceId, enrollmentSecret: o.secret, group: o.group, channel: this.cfg.channel });
    await fsp.mkdir(path.dirname(s.tokenFile), { recursive: true });
    await writeFileAtomic(s.tokenFile, r.token + '\n', 0o600);
    return { deviceId: r.deviceId, tokenFile: s.tokenFile };
  }

  /** `upgradectl check`: one check-in, the server's answer as is. */
  async check(): Promise<CheckinResponse> {
    if (!this.d.server) throw new IbuError('CONFIG_INVALID', 'No server is configured (server.url in the agent config).');
    await this.load();
    await this.flushEvents();
    const r = await this.doCheckin(await this.facts());
    return r!;
  }
}

function withFailed(j: Journal, v: string | null | undefined): string[] {
  const list = j.failedVersions ?? [];
  return v && !list.includes(v) ? [...list, v].slice(-20) : list;
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

async function allocated(p: string): Promise<number> {
  const st = await fsp.stat(p).catch(() => null);
  return st ? st.blocks * 512 : 0;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await fsp.open(file, fsc.O_RDONLY);
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}
