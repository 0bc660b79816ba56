import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { IbuError } from '../errors.js';
import type { MaintenanceWindow } from '../fleet/protocol.js';
import { isValidVersion } from '../version.js';
import type { EtcRule } from './etc-merge.js';
import { REBOOT_METHOD_SETTINGS, type RebootMethodSetting } from './reboot-method.js';
import { parseTransport, type Transport, type ZfsAgentConfig } from './zfs-config.js';

/** Default location of the device config. */
export const DEFAULT_CONFIG_PATH = '/etc/ibu/agent.json';

export type MigrationStrategy = 'copy' | 'keep-new' | 'merge';

export interface MigrationRule {
  /** Absolute path inside the root filesystem, e.g. /etc/passwd or /etc/ssh. */
  path: string;
  strategy: MigrationStrategy;
}

export interface HealthCheck {
  name: string;
  /** argv of a command that must exit 0 ... */
  command?: string[];
  /** ... or a URL that must answer with `expectStatus` (default 200). */
  url?: string;
  expectStatus?: number;
  timeoutSeconds: number;
  /**
   * false: one answer is final, and a failure fails the whole health check at once. For a check
   * that waits for its own answer, as `systemctl is-system-running --wait` waits for the boot to
   * finish: `degraded` then means a unit failed, and retrying until the deadline only keeps a
   * broken release running longer. Default true: retried every pollSeconds until the deadline.
   */
  retry?: boolean;
}

export interface Inhibitor {
  name: string;
  /** Busy while this file exists. */
  lockFile?: string;
  /** Busy while this command exits non-zero (e.g. `["/usr/bin/backup-idle"]`). */
  command?: string[];
}

export interface AgentConfig {
  configPath: string;
  /** keyFile: the device's enrollment key (default: device.key beside the token file). */
  server: { url: string; deviceId: string; token: string | null; tokenFile: string | null; keyFile: string | null } | null;
  channel: string;
  keyring: string;
  hostMount: string;
  imagesDir: string;
  /** File whose `loop=/images/<v>.img` names the running image (tests point it elsewhere). */
  cmdlineFile: string;
  /** Overrides the running version (images booted without `loop=`). */
  runningVersion: string | null;
  /** Root of the running system, the source of configuration migration. */
  systemRoot: string;
  boot: { envDir: string | null; espEnvDir: string | null; tryClearedBy: 'grub' | 'initramfs' | null };
  /** How the host filesystem is checkpointed so GRUB, which does not replay the journal, sees new files. */
  checkpoint: 'fsfreeze' | 'sync';
  reboot: RebootConfig;
  download: { deltaWaitSeconds: number; maxRetryAfterSeconds: number; useDelta: boolean; store: string | null };
  space: { reserveBytes: number; keepImages: number };
  migration: MigrationRule[];
  /** The three-way /etc merge between read-only images (etc-merge.ts): rules for paths changed on both sides, first match wins. */
  etc: { rules: EtcRule[] };
  health: { deadlineSeconds: number; checks: HealthCheck[] };
  window: MaintenanceWindow | null;
  inhibitors: Inhibitor[];
  inhibitorWaitSeconds: number;
  pollSeconds: number;
  /** 'ibu' (deltas, chunks) or 'zfs' (zfs send streams into `zfs.dataset`; docs/zfs.md). */
  transport: Transport;
  zfs: ZfsAgentConfig | null;
}

/** How the agent switches images and escalates a switch that does not happen (docs/agent.md "Reboot methods"). */
export interface RebootConfig {
  /** reboot (firmware + GRUB try-once), kexec, soft-reboot, or auto (reboot-method.ts). */
  method: RebootMethodSetting;
  /** A full reboot (also the revert after a failed trial, whatever the method). */
  command: string[];
  /** Executes the kernel loaded with `kexec -l`. */
  kexecCommand: string[];
  /** Switches into the root prepared at /run/nextroot. */
  softRebootCommand: string[];
  /** The escalation when the switch has not happened: run after `forceAfterSeconds`... */
  forceCommand: string[];
  forceAfterSeconds: number;
  /** ... then sysrq `b` (immediate reset, no sync) `sysrqAfterSeconds` later; 0 disables it. */
  sysrqAfterSeconds: number;
}

type Json = Record<string, unknown>;

/**
 * Reads and validates the device config, collecting every problem before failing, so one edit
 * fixes them all. Throws CONFIG_INVALID with `details.problems` (a list of sentences).
 */
export async function loadConfig(file = DEFAULT_CONFIG_PATH, overrides: Partial<Json> = {}): Promise<AgentConfig> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new IbuError(
      'CONFIG_INVALID',
      `Cannot read the agent config ${file} (${e.code ?? e.message}); create it (see docs/agent.md) or pass --config FILE.`,
      { cause: err },
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new IbuError('CONFIG_INVALID', `The agent config ${file} is not valid JSON: ${(err as Error).message}.`, { cause: err });
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new IbuError('CONFIG_INVALID', `The agent config ${file} must be a JSON object.`);
  return validateConfig({ ...(raw as Json), ...overrides }, file);
}

export function validateConfig(raw: Json, file: string): AgentConfig {
  const problems: string[] = [];
  const p = (msg: string): void => {
    problems.push(msg);
  };
  const known = new Set([
    'server',
    'channel',
    'keyring',
    'hostMount',
    'imagesDir',
    'cmdlineFile',
    'runningVersion',
    'systemRoot',
    'boot',
    'checkpoint',
    'reboot',
    'download',
    'space',
    'migration',
    'etc',
    'health',
    'window',
    'inhibitors',
    'inhibitorWaitSeconds',
    'pollSeconds',
    'transport',
    'zfs',
    '$schema',
    'comment',
  ]);
  for (const k of Object.keys(raw)) if (!known.has(k)) p(`unknown key '${k}' (a typo? known keys: ${[...known].filter((x) => !x.startsWith('$')).join(', ')})`);

  const str = (o: Json, k: string, where: string, def?: string): string => {
    const v = o[k];
    if (v === undefined && def !== undefined) return def;
    if (typeof v !== 'string' || v === '') {
      p(`${where}${k} must be a non-empty string${v === undefined ? ' (missing)' : ''}`);
      return def ?? '';
    }
    return v;
  };
  const num = (o: Json, k: string, where: string, def: number, min = 0): number => {
    const v = o[k];
    if (v === undefined) return def;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min) {
      p(`${where}${k} must be a number >= ${min}`);
      return def;
    }
    return v;
  };
  const argv = (v: unknown, where: string): string[] | undefined => {
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string' && x !== '')) {
      p(`${where} must be a non-empty array of strings (an argv, no shell)`);
      return undefined;
    }
    return v as string[];
  };
  const obj = (k: string): Json => {
    const v = raw[k];
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v)) {
      p(`${k} must be an object`);
      return {};
    }
    return v as Json;
  };
  const abs = (v: string, what: string): string => {
    if (v && !path.isAbsolute(v)) p(`${what} must be an absolute path, got '${v}'`);
    return v;
  };

  let server: AgentConfig['server'] = null;
  if (raw.server !== undefined && raw.server !== null) {
    const s = obj('server');
    const url = str(s, 'url', 'server.');
    if (url && !/^https?:\/\/[^/]+/.test(url)) p(`server.url must be an http(s) URL, got '${url}'`);
    const deviceId = str(s, 'deviceId', 'server.');
    const token = s.token === undefined ? null : str(s, 'token', 'server.');
    // The token file is read when needed (it may appear at enrollment); here only its form is checked.
    const tokenFile = s.tokenFile === undefined ? null : abs(str(s, 'tokenFile', 'server.'), 'server.tokenFile');
    const keyFile =
      s.keyFile === undefined ? (tokenFile ? path.join(path.dirname(tokenFile), 'device.key') : null) : abs(str(s, 'keyFile', 'server.'), 'server.keyFile');
    server = { url: url.replace(/\/+$/, ''), deviceId, token, tokenFile, keyFile };
  }

  const channel = str(raw, 'channel', '', 'stable');
  const keyring = abs(str(raw, 'keyring', '', '/etc/ibu/keyring'), 'keyring');
  const hostMount = abs(str(raw, 'hostMount', '', '/host'), 'hostMount');
  const imagesDir = abs(str(raw, 'imagesDir', '', path.join(hostMount || '/host', 'images')), 'imagesDir');
  const cmdlineFile = abs(str(raw, 'cmdlineFile', '', '/proc/cmdline'), 'cmdlineFile');
  let runningVersion: string | null = null;
  if (raw.runningVersion !== undefined) {
    runningVersion = str(raw, 'runningVersion', '');
    if (runningVersion && !isValidVersion(runningVersion)) p(`runningVersion '${runningVersion}' is not a valid version`);
  }
  const systemRoot = abs(str(raw, 'systemRoot', '', '/'), 'systemRoot');

  const b = obj('boot');
  const tryCleared = b.tryClearedBy;
  if (tryCleared !== undefined && tryCleared !== 'grub' && tryCleared !== 'initramfs') p(`boot.tryClearedBy must be 'grub' or 'initramfs'`);
  const boot = {
    envDir: b.envDir === undefined ? null : abs(str(b, 'envDir', 'boot.'), 'boot.envDir'),
    espEnvDir: b.espEnvDir === undefined ? null : abs(str(b, 'espEnvDir', 'boot.'), 'boot.espEnvDir'),
    tryClearedBy: (tryCleared as 'grub' | 'initramfs' | undefined) ?? null,
  };

  const checkpoint = raw.checkpoint ?? 'fsfreeze';
  if (checkpoint !== 'fsfreeze' && checkpoint !== 'sync')
    p(`checkpoint must be 'fsfreeze' or 'sync' (sync only where GRUB does not read the filesystem, e.g. tests)`);

  const r = obj('reboot');
  if (r.method !== undefined && !REBOOT_METHOD_SETTINGS.includes(r.method as RebootMethodSetting))
    p(`reboot.method must be one of ${REBOOT_METHOD_SETTINGS.join(', ')}, got ${JSON.stringify(r.method)}`);
  const reboot: RebootConfig = {
    method: REBOOT_METHOD_SETTINGS.includes(r.method as RebootMethodSetting) ? (r.method as RebootMethodSetting) : 'reboot',
    command: argv(r.command, 'reboot.command') ?? ['systemctl', 'reboot'],
    kexecCommand: argv(r.kexecCommand, 'reboot.kexecCommand') ?? ['systemctl', 'kexec'],
    softRebootCommand: argv(r.softRebootCommand, 'reboot.softRebootCommand') ?? ['systemctl', 'soft-reboot'],
    forceCommand: argv(r.forceCommand, 'reboot.forceCommand') ?? ['reboot', '-f'],
    forceAfterSeconds: num(r, 'forceAfterSeconds', 'reboot.', 120),
    sysrqAfterSeconds: num(r, 'sysrqAfterSeconds', 'reboot.', 60),
  };
  for (const k of Object.keys(r))
    if (!['method', 'command', 'kexecCommand', 'softRebootCommand', 'forceCommand', 'forceAfterSeconds', 'sysrqAfterSeconds'].includes(k))
      p(`unknown key 'reboot.${k}'`);

  const d = obj('download');
  if (d.useDelta !== undefined && typeof d.useDelta !== 'boolean') p('download.useDelta must be true or false');
  const download = {
    deltaWaitSeconds: num(d, 'deltaWaitSeconds', 'download.', 600),
    maxRetryAfterSeconds: num(d, 'maxRetryAfterSeconds', 'download.', 60, 0.01),
    useDelta: d.useDelta !== false,
    store: d.store === undefined ? null : str(d, 'store', 'download.'),
  };

  const sp = obj('space');
  const space = { reserveBytes: num(sp, 'reserveBytes', 'space.', 64 * 1024 * 1024), keepImages: num(sp, 'keepImages', 'space.', 2.5, 1) };

  const migration: MigrationRule[] = [];
  if (raw.migration !== undefined) {
    if (!Array.isArray(raw.migration)) p('migration must be an array of {path, strategy}');
    else
      raw.migration.forEach((m: unknown, i: number) => {
        const where = `migration[${i}].`;
        if (!m || typeof m !== 'object') return p(`${where.slice(0, -1)} must be an object`);
        const mm = m as Json;
        const rp = str(mm, 'path', where);
        if (rp && (!path.isAbsolute(rp) || rp.split('/').includes('..') || rp === '/'))
          p(`${where}path must be an absolute path below / without '..', got '${rp}'`);
        const st = mm.strategy;
        if (st !== 'copy' && st !== 'keep-new' && st !== 'merge') p(`${where}strategy must be 'copy', 'keep-new' or 'merge'`);
        migration.push({ path: rp, strategy: st as MigrationStrategy });
      });
  }

  const et = obj('etc');
  const etcRules: EtcRule[] = [];
  if (et.rules !== undefined) {
    if (!Array.isArray(et.rules)) p('etc.rules must be an array of {path, rule}');
    else
      et.rules.forEach((x: unknown, i: number) => {
        const where = `etc.rules[${i}].`;
        const xx = (x ?? {}) as Json;
        const rp = str(xx, 'path', where);
        if (rp && (rp.startsWith('/') || rp.split('/').includes('..')))
          p(`${where}path must be a path below /etc without a leading '/' or '..' (e.g. 'ssh/sshd_config', 'app/', 'ssh/ssh_host_*'), got '${rp}'`);
        if (xx.rule !== 'device' && xx.rule !== 'vendor' && xx.rule !== 'merge') p(`${where}rule must be 'device', 'vendor' or 'merge'`);
        etcRules.push({ path: rp, rule: xx.rule as EtcRule['rule'] });
      });
  }

  const h = obj('health');
  const checks: HealthCheck[] = [];
  if (h.checks !== undefined) {
    if (!Array.isArray(h.checks)) p('health.checks must be an array');
    else
      h.checks.forEach((c: unknown, i: number) => {
        const where = `health.checks[${i}].`;
        if (!c || typeof c !== 'object') return p(`${where.slice(0, -1)} must be an object`);
        const cc = c as Json;
        const command = argv(cc.command, `${where}command`);
        let url: string | undefined;
        if (cc.url !== undefined) {
          url = str(cc, 'url', where);
          if (url && !/^https?:\/\//.test(url)) p(`${where}url must be an http(s) URL`);
        }
        if (!command && !url) p(`${where.slice(0, -1)} needs a command or a url`);
        if (command && url) p(`${where.slice(0, -1)} has both a command and a url; use one per check`);
        checks.push({
          name: typeof cc.name === 'string' ? cc.name : `check ${i + 1}`,
          command,
          url,
          expectStatus: num(cc, 'expectStatus', where, 200, 100),
          timeoutSeconds: num(cc, 'timeoutSeconds', where, 30, 0.1),
          ...(cc.retry === false ? { retry: false } : {}),
        });
        if (cc.retry !== undefined && typeof cc.retry !== 'boolean') p(`${where}retry must be true or false`);
      });
  }
  const health = { deadlineSeconds: num(h, 'deadlineSeconds', 'health.', 300, 1), checks };

  let window: MaintenanceWindow | null = null;
  if (raw.window !== undefined && raw.window !== null) {
    const w = obj('window');
    const tz = str(w, 'timeZone', 'window.');
    if (tz) {
      try {
        new Intl.DateTimeFormat('en-US', { timeZone: tz });
      } catch {
        p(`window.timeZone '${tz}' is not an IANA time zone (e.g. Europe/Berlin)`);
      }
    }
    const rules: MaintenanceWindow['rules'] = [];
    if (!Array.isArray(w.rules) || w.rules.length === 0) p('window.rules must be a non-empty array of {days, start, end}');
    else
      w.rules.forEach((ru: unknown, i: number) => {
        const where = `window.rules[${i}].`;
        const rr = (ru ?? {}) as Json;
        const days = rr.days;
        if (!Array.isArray(days) || days.length === 0 || !days.every((x) => Number.isInteger(x) && x >= 0 && x <= 6))
          p(`${where}days must be weekday numbers 0 (Sunday) to 6`);
        for (const k of ['start', 'end'])
          if (typeof rr[k] !== 'string' || !/^([01]\d|2[0-3]):[0-5]\d$/.test(rr[k] as string)) p(`${where}${k} must be HH:MM (24 h)`);
        rules.push({ days: (days as number[]) ?? [], start: String(rr.start), end: String(rr.end) });
      });
    window = { timeZone: tz, rules };
  }

  const inhibitors: Inhibitor[] = [];
  if (raw.inhibitors !== undefined) {
    if (!Array.isArray(raw.inhibitors)) p('inhibitors must be an array of {name, lockFile | command}');
    else
      raw.inhibitors.forEach((x: unknown, i: number) => {
        const where = `inhibitors[${i}].`;
        const xx = (x ?? {}) as Json;
        const lockFile = xx.lockFile === undefined ? undefined : abs(str(xx, 'lockFile', where), `${where}lockFile`);
        const command = argv(xx.command, `${where}command`);
        if (!lockFile && !command) p(`${where.slice(0, -1)} needs a lockFile or a command`);
        inhibitors.push({ name: typeof xx.name === 'string' ? xx.name : `inhibitor ${i + 1}`, lockFile, command });
      });
  }

  const tr = parseTransport(raw, p);

  const cfg: AgentConfig = {
    configPath: file,
    server,
    channel,
    keyring,
    hostMount,
    imagesDir,
    cmdlineFile,
    runningVersion,
    systemRoot,
    boot,
    checkpoint: checkpoint as AgentConfig['checkpoint'],
    reboot,
    download,
    space,
    migration,
    etc: { rules: etcRules },
    health,
    window,
    inhibitors,
    inhibitorWaitSeconds: num(raw, 'inhibitorWaitSeconds', '', 3600),
    pollSeconds: num(raw, 'pollSeconds', '', 10, 0.01),
    transport: tr.transport,
    zfs: tr.zfs,
  };
  if (problems.length > 0) {
    throw new IbuError(
      'CONFIG_INVALID',
      `The agent config ${file} has ${problems.length} problem${problems.length > 1 ? 's' : ''}:\n  - ${problems.join('\n  - ')}\n` +
        'Fix them and run the command again.',
      {
        details: { problems },
      },
    );
  }
  return cfg;
}

/** The device token: inline in the config or read from `server.tokenFile`. */
export async function deviceToken(cfg: AgentConfig): Promise<string | null> {
  if (!cfg.server) return null;
  if (cfg.server.token) return cfg.server.token;
  const tf = cfg.server.tokenFile;
  if (!tf) return null;
  try {
    return (await fsp.readFile(tf, 'utf8')).trim();
  } catch (err) {
    // Not enrolled yet: requests go without a token (and `upgradectl enroll` writes it).
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new IbuError('CONFIG_INVALID', `Cannot read the device token file ${tf}: ${(err as Error).message}. Enroll the device or fix server.tokenFile.`, {
      cause: err,
    });
  }
}
