/**
 * The upgrade story both `npm run demo:model` (demo/demo.ts) and test/e2e/agent-upgrade.test.ts (a)
 * tell: a device on 1.0 upgrades to 2.0 through a delta, trial-boots it, passes its health check
 * and commits. One definition, so the demo shows exactly what the test asserts.
 */

/** The serial lines of the story, in order (GRUB's ibu line, the image init's IBU-E2E markers, upgradectl). */
export const UPGRADE_STORY: readonly RegExp[] = [
  /ibu: default_image=1\.0 try= boot=1\.0 trial=0/,
  /IBU-E2E RUNNING version=1\.0 trial=0/,
  /IBU-E2E prepare exit 0/,
  /upgradectl: rebooting/,
  /ibu: default_image=1\.0 try=2\.0 boot=2\.0 trial=1/,
  /IBU-E2E RUNNING version=2\.0 trial=1/,
  /IBU-E2E confirm exit 0/,
  /IBU-E2E status .*"running":"2\.0","committed":"2\.0"/,
  /IBU-E2E POWEROFF version=2\.0/,
];

/** The health check of a healthy image: its userland is there. */
export const HEALTHY_CHECKS = [{ name: 'userland', command: ['test', '-f', '/etc/ibu-e2e/version'], timeoutSeconds: 10 }];

/** The server's record of the device at the end: committed on 2.0, no error. */
export const COMMITTED_RECORD = { version: '2.0', committedVersion: '2.0', state: 'committed', trial: false, lastErrorCode: null };

/** The device's events on the server, in order. */
export const UPGRADE_EVENTS = [
  { type: 'apply-started', from: '1.0', to: '2.0' },
  { type: 'upgrade-succeeded', from: '1.0', to: '2.0' },
];
