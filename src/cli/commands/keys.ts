import type { Command } from 'commander';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { createPublicKey } from 'node:crypto';
import { IbuError } from '../../errors.js';
import { generateKeys, keyIdOf, parsePublicKey } from '../../release/keys.js';
import { Keyring, REVOKED_FILE } from '../../release/keyring.js';

/** `ibu keys generate|id|revoke|list`: release signing keys and device keyrings (docs/releases.md). */
export function registerKeysCommands(program: Command): void {
  const keys = program.command('keys').description('release signing keys and keyrings');

  keys
    .command('generate')
    .description('write a new ed25519 key pair: DIR/signing.key (0600) and DIR/signing.pub')
    .requiredOption('--out <dir>', 'directory for signing.key and signing.pub')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { out: string; json?: boolean }) => {
      const r = await generateKeys(opts.out);
      if (opts.json) process.stdout.write(JSON.stringify(r) + '\n');
      else process.stdout.write(`key ${r.keyId}\n  private: ${r.privateKeyPath} (keep secret)\n  public:  ${r.publicKeyPath} (copy into device keyrings)\n`);
    });

  keys
    .command('id')
    .description('print the key id of a signing.key or signing.pub')
    .argument('<file>')
    .action(async (file: string) => {
      const pem = await fsp.readFile(file);
      let id: string;
      try {
        id = keyIdOf(createPublicKey(pem));
      } catch (err) {
        if (err instanceof IbuError) throw err;
        id = keyIdOf(parsePublicKey(pem, file));
      }
      process.stdout.write(`${id}\n`);
    });

  keys
    .command('revoke')
    .description("add a key id to a keyring's revoked list (takes effect at the next verification)")
    .requiredOption('--keyring <dir>', 'keyring directory')
    .argument('<keyId>', 'key id (16 hex digits) or a .pub file')
    .action(async (keyArg: string, opts: { keyring: string }) => {
      let id = keyArg.toLowerCase();
      if (!/^[0-9a-f]{16}$/.test(id)) id = keyIdOf(parsePublicKey(await fsp.readFile(keyArg), keyArg));
      const file = path.join(opts.keyring, REVOKED_FILE);
      const old = await fsp.readFile(file, 'utf8').catch(() => '');
      if (!old.split('\n').some((l) => l.replace(/#.*/, '').trim() === id)) {
        const { writeFileAtomic } = await import('../../util/atomic.js');
        await writeFileAtomic(file, `${old}${old && !old.endsWith('\n') ? '\n' : ''}${id}  # revoked ${new Date().toISOString()}\n`);
      }
      process.stdout.write(`revoked ${id} in ${opts.keyring}\n`);
    });

  keys
    .command('list')
    .description('list the trusted and revoked keys of a keyring')
    .requiredOption('--keyring <dir>', 'keyring directory')
    .option('--json', 'print JSON')
    .action(async (opts: { keyring: string; json?: boolean }) => {
      const k = await Keyring.load(opts.keyring);
      const rows = [...k.trusted.keys()].map((id) => ({ keyId: id, revoked: k.revoked.has(id) }));
      const extra = [...k.revoked].filter((id) => !k.trusted.has(id)).map((id) => ({ keyId: id, revoked: true }));
      if (opts.json) process.stdout.write(JSON.stringify([...rows, ...extra]) + '\n');
      else for (const r of [...rows, ...extra]) process.stdout.write(`${r.keyId}${r.revoked ? '  revoked' : ''}\n`);
    });
}
