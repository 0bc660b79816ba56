/**
 * The wire protocol between a device agent (upgradectl) and the fleet server (`ibu serve`).
 * Shared by src/agent (client), src/server/fleet (server) and the fleet simulator.
 *
 *   POST /v1/devices/enroll             EnrollRequest -> EnrollResponse
 *   POST /v1/devices/:id/checkin        CheckinRequest -> CheckinResponse   (Authorization: Bearer <token>)
 *   POST /v1/devices/:id/events         DeviceEvent -> { ok: true }          (Authorization: Bearer <token>)
 *   POST /v1/devices/:id/lease/release  {} -> { ok: true }                   (returns a reboot lease early)
 */
export interface EnrollRequest {
  deviceId: string;
  /**
   * The device's factory secret when the vendor imported one for this id, else the fleet-wide
   * enrollment secret; not needed for ids pre-authorized without a secret, nor to re-enroll.
   */
  enrollmentSecret?: string;
  /** Honoured only at the first enrollment by the fleet secret; re-enrolling never moves a device. */
  group?: string;
  channel?: string;
  /** The device's ed25519 public key (raw 32 bytes, base64url); bound to the id at first enrollment. */
  publicKey: string;
  /** When the proof was signed (epoch ms, device clock). */
  at: number;
  /** ed25519 signature over the id, the public key and `at` (src/fleet/device-proof.ts). */
  proof: string;
}
export interface EnrollResponse {
  deviceId: string;
  token: string; // shown once; the server stores only a hash
}

export type DeviceState = 'idle' | 'preparing' | 'prepared' | 'applying' | 'trial' | 'committed' | 'rolled-back' | 'failed';

export interface CheckinRequest {
  version: string; // running image version
  state: DeviceState;
  trial: boolean; // running a not yet committed image
  committedVersion?: string;
  preparedVersion?: string;
  freeBytes?: number;
  lastError?: { code: string; message: string } | null;
  /** The agent wants to reboot into a prepared image and asks for a lease. */
  wantRebootLease?: boolean;
}

export interface MaintenanceWindow {
  timeZone: string; // IANA, e.g. Europe/Berlin
  /** Each rule: weekdays (0 = Sunday) and a local time range; end may wrap past midnight. */
  rules: Array<{ days: number[]; start: string; end: string }>;
}

export interface CheckinResponse {
  target: { version: string; mandatory: boolean; manifestUrl: string } | null;
  deltaReady: boolean;
  window: MaintenanceWindow | null; // null = any time
  rebootLease: { granted: boolean; expiresAt?: string };
  nextCheckinSeconds: number;
}

export type DeviceEventType =
  | 'prepare-failed'
  | 'apply-started'
  | 'upgrade-succeeded'
  | 'upgrade-failed'
  | 'rolled-back'
  /** The device booted an image other than its committed one (error.message says why; docs/boot.md). */
  | 'boot-fallback'
  /** A damaged or lost boot environment copy was rewritten by the agent. */
  | 'bootenv-repaired'
  /** The /etc merge of an upgrade found paths changed on both sides (error.message lists them and what was kept). */
  | 'etc-conflict'
  /** A reboot or image switch did not happen by itself and escalated (reboot -f, sysrq b; docs/agent.md). */
  | 'reboot-stuck';

/** Events about the boot itself, not about an upgrade: they flag the device, not a rollout participation. */
export const BOOT_EVENT_TYPES: readonly DeviceEventType[] = ['boot-fallback', 'bootenv-repaired', 'reboot-stuck'];

/** Events that are only recorded: no step of an upgrade, no flag. */
export const NOTE_EVENT_TYPES: readonly DeviceEventType[] = ['etc-conflict'];

export interface DeviceEvent {
  type: DeviceEventType;
  fromVersion: string;
  toVersion: string;
  at?: string;
  error?: { code: string; message: string };
  /** How the device entered (or left) the trial: reboot, kexec, soft-reboot (issue #18). */
  method?: 'reboot' | 'kexec' | 'soft-reboot';
}
