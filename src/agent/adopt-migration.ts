import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { MigrationRule } from './config.js';

/**
 * What `upgradectl adopt` carries from the conventional system into the image before its first
 * boot (the vendor's `migration` list from the agent config comes after these): the machine's
 * identity, its SSH host keys, its network configuration, local accounts and passwords (merged),
 * data-disk mounts (merged), and the agent's own configuration and keys.
 */
export async function adoptMigrationRules(systemRoot: string): Promise<MigrationRule[]> {
  const rules: MigrationRule[] = [
    { path: '/etc/hostname', strategy: 'copy' },
    { path: '/etc/hosts', strategy: 'copy' },
    { path: '/etc/machine-id', strategy: 'copy' },
  ];
  // Host keys only: the image's own sshd_config (a newer release's) stays.
  const ssh = await fsp.readdir(path.join(systemRoot, 'etc/ssh')).catch(() => [] as string[]);
  for (const n of ssh.sort()) if (/^ssh_host_.*_key(\.pub)?$/.test(n)) rules.push({ path: `/etc/ssh/${n}`, strategy: 'copy' });
  // Only what the machine configured: an empty directory (bookworm's systemd ships /etc/systemd/network
  // empty) would replace the image's own network files (a systemd-networkd appliance's DHCP) with nothing.
  for (const p of ['/etc/network/interfaces', '/etc/network/interfaces.d', '/etc/systemd/network', '/etc/NetworkManager/system-connections', '/etc/netplan']) {
    if (await configured(path.join(systemRoot, p))) rules.push({ path: p, strategy: 'copy' });
  }
  for (const f of ['passwd', 'group', 'shadow', 'gshadow', 'subuid', 'subgid']) rules.push({ path: `/etc/${f}`, strategy: 'merge' });
  rules.push({ path: '/etc/fstab', strategy: 'merge' });
  rules.push({ path: '/etc/ibu', strategy: 'copy' });
  return rules;
}

/** A file, or a directory with something in it. */
async function configured(p: string): Promise<boolean> {
  const st = await fsp.stat(p).catch(() => null);
  if (!st) return false;
  return !st.isDirectory() || (await fsp.readdir(p)).length > 0;
}

/** Mount points the image provides itself: never taken from the conventional system's fstab. */
const SYSTEM_MOUNTS = new Set(['/', '/boot', '/boot/efi', '/efi', '/usr', '/var', '/tmp', '/host', '/proc', '/sys', '/dev', '/run']);

interface FstabEntry {
  spec: string;
  file: string;
  type: string;
  line: string;
}

function parseFstab(text: string): FstabEntry[] {
  const out: FstabEntry[] = [];
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (!t || t.startsWith('#')) continue;
    const f = t.split(/\s+/);
    if (f.length < 3) continue;
    out.push({ spec: f[0]!, file: f[1]!, type: f[2]!, line });
  }
  return out;
}

/**
 * The image's fstab plus the running system's data-disk entries: every entry whose mount point
 * the image does not provide itself (/, /boot, /usr, ...) and does not already list. Swap files
 * on the old root are left out (that filesystem is /host in the image). Idempotent.
 */
export function mergeFstab(oldText: string, newText: string): { text: string; added: string[] } {
  const have = new Set(parseFstab(newText).map((e) => (e.type === 'swap' ? `swap:${e.spec}` : e.file)));
  const add: FstabEntry[] = [];
  for (const e of parseFstab(oldText)) {
    if (e.type === 'swap') {
      if (e.spec.startsWith('/') && !e.spec.startsWith('/dev/')) continue;
      if (!have.has(`swap:${e.spec}`)) add.push(e);
      continue;
    }
    if (SYSTEM_MOUNTS.has(e.file) || have.has(e.file)) continue;
    add.push(e);
  }
  if (add.length === 0) return { text: newText, added: [] };
  const base = newText === '' || newText.endsWith('\n') ? newText : newText + '\n';
  const text = base + '# data disks of the conventional system (upgradectl adopt)\n' + add.map((e) => e.line.trim()).join('\n') + '\n';
  return { text, added: add.map((e) => (e.type === 'swap' ? `swap ${e.spec}` : e.file)) };
}
