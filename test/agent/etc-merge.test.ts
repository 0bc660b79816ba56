/**
 * The three-way /etc merge as a table (src/agent/etc-merge.ts, issue #22): old image defaults,
 * new image defaults, the device's tree → one decision per path. Each row names the case the
 * issue asks for where it is one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planEtcMerge, ruleFor, type EtcEntry, type EtcRule, type EtcTree } from '../../src/agent/etc-merge.js';

const f = (hash: string, mode = 0o644, text?: string): EtcEntry => ({ type: 'file', hash, mode, uid: 0, gid: 0, ...(text !== undefined ? { text } : {}) });
const dir = (mode = 0o755): EtcEntry => ({ type: 'dir', mode, uid: 0, gid: 0 });
const ln = (target: string): EtcEntry => ({ type: 'symlink', target });
const acct = (text: string): EtcEntry => f(`h:${text}`, 0o644, text);
type T = Record<string, EtcEntry>;
const tree = (t: T): EtcTree => new Map(Object.entries(t));

interface Row {
  name: string;
  old: T;
  next: T;
  device: T;
  rules?: EtcRule[];
  /** path → expected take, and 'C' when a conflict is expected, 'S' when the device's entry is saved aside */
  expect: Record<string, string>;
  merged?: Record<string, string>;
}

const PASSWD_OLD = 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/usr/sbin/nologin\n';
const PASSWD_NEW = PASSWD_OLD + 'systemd-network:x:998:998::/:/usr/sbin/nologin\n';
const PASSWD_DEV = 'root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n';

const rows: Row[] = [
  { name: 'untouched everywhere', old: { a: f('1') }, next: { a: f('1') }, device: { a: f('1') }, expect: { a: 'new' } },
  { name: 'vendor changed, device did not → new default', old: { a: f('1') }, next: { a: f('2') }, device: { a: f('1') }, expect: { a: 'new' } },
  { name: 'device changed, vendor did not → device', old: { a: f('1') }, next: { a: f('1') }, device: { a: f('3') }, expect: { a: 'device' } },
  { name: 'same change on both sides → new, no conflict', old: { a: f('1') }, next: { a: f('2') }, device: { a: f('2') }, expect: { a: 'new' } },
  { name: 'both changed, default rule → device wins, conflict', old: { a: f('1') }, next: { a: f('2') }, device: { a: f('3') }, expect: { a: 'device C' } },
  {
    name: 'both changed, vendor rule → new, device saved aside',
    old: { a: f('1') },
    next: { a: f('2') },
    device: { a: f('3') },
    rules: [{ path: 'a', rule: 'vendor' }],
    expect: { a: 'new C S' },
  },
  { name: 'mode change on the device only → device', old: { a: f('1') }, next: { a: f('1') }, device: { a: f('1', 0o600) }, expect: { a: 'device' } },
  { name: 'file deleted on the device, vendor unchanged → stays deleted', old: { a: f('1') }, next: { a: f('1') }, device: {}, expect: { a: 'device' } },
  {
    name: 'file deleted on the device, vendor changed it → conflict, deletion kept',
    old: { a: f('1') },
    next: { a: f('2') },
    device: {},
    expect: { a: 'device C' },
  },
  {
    name: 'file deleted on the device, vendor changed it, vendor rule → the new file comes back',
    old: { a: f('1') },
    next: { a: f('2') },
    device: {},
    rules: [{ path: 'a', rule: 'vendor' }],
    expect: { a: 'new C' },
  },
  { name: 'file added on the device → device', old: {}, next: {}, device: { local: f('9') }, expect: { local: 'device' } },
  { name: 'file added by the vendor → new', old: {}, next: { fresh: f('9') }, device: {}, expect: { fresh: 'new' } },
  { name: 'file removed by the vendor, untouched on the device → removed', old: { gone: f('1') }, next: {}, device: { gone: f('1') }, expect: { gone: 'new' } },
  {
    name: 'file removed by the vendor, edited on the device → conflict, the device keeps it',
    old: { gone: f('1') },
    next: {},
    device: { gone: f('2') },
    expect: { gone: 'device C' },
  },
  {
    name: 'file became a directory on the device, vendor unchanged → the directory and its files',
    old: { 'x.conf': f('1') },
    next: { 'x.conf': f('1') },
    device: { 'x.conf': dir(), 'x.conf/a': f('5') },
    expect: { 'x.conf': 'device', 'x.conf/a': 'device' },
  },
  {
    name: 'file became a directory on the device, vendor changed the file, vendor rule → the file; the directory saved aside',
    old: { 'x.conf': f('1') },
    next: { 'x.conf': f('2') },
    device: { 'x.conf': dir(), 'x.conf/a': f('5') },
    rules: [{ path: 'x.conf', rule: 'vendor' }],
    expect: { 'x.conf': 'new C S', 'x.conf/a': 'new C S' },
  },
  {
    name: "directory became a file in the new image, device added a file inside → the new file; the device's own file saved aside",
    old: { d: dir(), 'd/a': f('1') },
    next: { d: f('2') },
    device: { d: dir(), 'd/a': f('1'), 'd/mine': f('7') },
    expect: { d: 'new', 'd/a': 'new', 'd/mine': 'new C S' },
  },
  {
    name: 'symlink changed to a file on the device → the file',
    old: { 'resolv.conf': ln('/run/resolv.conf') },
    next: { 'resolv.conf': ln('/run/resolv.conf') },
    device: { 'resolv.conf': f('dns') },
    expect: { 'resolv.conf': 'device' },
  },
  {
    name: 'symlink changed to a file on the device, vendor retargeted the link → conflict, device wins',
    old: { 'resolv.conf': ln('/run/resolv.conf') },
    next: { 'resolv.conf': ln('/run/systemd/resolve/stub-resolv.conf') },
    device: { 'resolv.conf': f('dns') },
    expect: { 'resolv.conf': 'device C' },
  },
  {
    name: 'machine-id: generated on the device, image changed its placeholder → the device keeps its identity',
    old: { 'machine-id': f('empty') },
    next: { 'machine-id': f('uninitialized') },
    device: { 'machine-id': f('4f1c…') },
    expect: { 'machine-id': 'device C' },
  },
  {
    name: 'SSH host keys: made on the device, a new image shipping keys does not replace them',
    old: { ssh: dir() },
    next: { ssh: dir(), 'ssh/ssh_host_ed25519_key': f('vendor-key', 0o600) },
    device: { ssh: dir(), 'ssh/ssh_host_ed25519_key': f('device-key', 0o600) },
    expect: { ssh: 'new', 'ssh/ssh_host_ed25519_key': 'device C' },
  },
  {
    name: "a config rule for a directory (vendor wins for ssh/): the new sshd_config, the device's saved aside",
    old: { 'ssh/sshd_config': f('1') },
    next: { 'ssh/sshd_config': f('2') },
    device: { 'ssh/sshd_config': f('3') },
    rules: [{ path: 'ssh/', rule: 'vendor' }],
    expect: { 'ssh/sshd_config': 'new C S' },
  },
  {
    name: 'passwd drift: a local user and a changed shell on the device, a new system user in the image → merged',
    old: { passwd: acct(PASSWD_OLD) },
    next: { passwd: acct(PASSWD_NEW) },
    device: { passwd: acct(PASSWD_DEV) },
    expect: { passwd: 'merged C' },
    merged: {
      passwd:
        'root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\nsystemd-network:x:998:998::/:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n',
    },
  },
  {
    name: 'group drift: members added on the device, a new system group in the image → union of members',
    old: { group: acct('root:x:0:\nsudo:x:27:\n') },
    next: { group: acct('root:x:0:\nsudo:x:27:\nsystemd-journal:x:999:\n') },
    device: { group: acct('root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n') },
    expect: { group: 'merged C' },
    merged: { group: 'root:x:0:\nsudo:x:27:alice\nsystemd-journal:x:999:\nalice:x:1000:\n' },
  },
  {
    name: 'shadow drift: the device changed a password, the image added a system user → merged, the hash kept',
    old: { shadow: acct('root:*:1::::::\n') },
    next: { shadow: acct('root:*:1::::::\nsystemd-network:!*:1::::::\n') },
    device: { shadow: acct('root:$y$j9T$abc:19000::::::\n') },
    expect: { shadow: 'merged C' },
    merged: { shadow: 'root:$y$j9T$abc:19000::::::\nsystemd-network:!*:1::::::\n' },
  },
  {
    name: 'passwd: only the vendor added a system user → the new default, no conflict',
    old: { passwd: acct(PASSWD_OLD) },
    next: { passwd: acct(PASSWD_NEW) },
    device: { passwd: acct(PASSWD_OLD) },
    expect: { passwd: 'new' },
  },
  {
    name: 'passwd deleted on the device (merge rule, nothing to merge) → the deletion stands, reported',
    old: { passwd: acct(PASSWD_OLD) },
    next: { passwd: acct(PASSWD_NEW) },
    device: {},
    expect: { passwd: 'device C' },
  },
  {
    name: 'edit made after prepare and before apply: the plan reads the device at apply, so the late edit is kept',
    old: { 'app.conf': f('1') },
    next: { 'app.conf': f('1') },
    // at prepare the device had '1'; the edit to '2' happened afterwards and is what apply reads
    device: { 'app.conf': f('2') },
    expect: { 'app.conf': 'device' },
  },
  {
    name: 'a directory the device deleted, vendor unchanged → stays deleted with everything in it',
    old: { 'cron.d': dir(), 'cron.d/job': f('1') },
    next: { 'cron.d': dir(), 'cron.d/job': f('1') },
    device: {},
    expect: { 'cron.d': 'device', 'cron.d/job': 'device' },
  },
  {
    name: 'a file the device deleted inside a directory the vendor extended → deletion kept, the new file arrives',
    old: { 'cron.d': dir(), 'cron.d/job': f('1') },
    next: { 'cron.d': dir(), 'cron.d/job': f('1'), 'cron.d/new': f('2') },
    device: { 'cron.d': dir() },
    expect: { 'cron.d': 'new', 'cron.d/job': 'device', 'cron.d/new': 'new' },
  },
];

for (const r of rows) {
  test(`etc merge: ${r.name}`, () => {
    const plan = planEtcMerge(tree(r.old), tree(r.next), tree(r.device), r.rules ?? []);
    const got: Record<string, string> = {};
    for (const d of plan.decisions) got[d.path] = [d.result.take, d.conflict ? 'C' : '', d.saveDevice ? 'S' : ''].filter(Boolean).join(' ');
    assert.deepEqual(got, r.expect);
    for (const [p, text] of Object.entries(r.merged ?? {})) {
      const d = plan.decisions.find((x) => x.path === p)!;
      assert.equal(d.result.take === 'merged' ? d.result.text : null, text);
    }
    // every conflict is in the list the agent reports; nothing the device loses goes unreported
    assert.deepEqual(
      plan.conflicts.map((c) => c.path),
      plan.decisions.filter((d) => d.conflict).map((d) => d.path),
    );
    for (const d of plan.decisions) if (d.saveDevice) assert.ok(d.conflict, `${d.path}: saved aside without a conflict`);
  });
}

test('etc merge: the device layer holds exactly what differs from the new defaults', () => {
  const plan = planEtcMerge(
    tree({ a: f('1'), b: f('1'), c: f('1') }),
    tree({ a: f('2'), b: f('1'), c: f('1') }),
    tree({ a: f('1'), b: f('3'), local: f('9') }),
  );
  assert.deepEqual(
    plan.deviceLayer.map((d) => d.path),
    ['b', 'c', 'local'],
  );
});

test('etc rules: config first, then the defaults (machine-id, SSH host keys, account files), else device', () => {
  assert.equal(ruleFor('machine-id', []), 'device');
  assert.equal(ruleFor('ssh/ssh_host_rsa_key.pub', []), 'device');
  assert.equal(ruleFor('gshadow', []), 'merge');
  assert.equal(ruleFor('app/x.conf', [{ path: 'app/', rule: 'vendor' }]), 'vendor');
  assert.equal(ruleFor('app', [{ path: 'app/', rule: 'vendor' }]), 'vendor');
  assert.equal(ruleFor('apple', [{ path: 'app/', rule: 'vendor' }]), 'device');
  assert.equal(ruleFor('motd', []), 'device');
});
