import { promises as fsp, constants as fsc } from 'node:fs';
import { IbuError } from '../errors.js';

/**
 * The GRUB environment block format (grub-core/lib/envblk.c): exactly 1024 bytes, the signature
 * line below, `name=value\n` lines, then `#` padding. GRUB's `load_env` refuses a block whose
 * signature or size is wrong, and `save_env` rewrites the same bytes in place through the file's
 * block list, so the file must keep its size and its blocks.
 */
export const GRUBENV_SIZE = 1024;
export const GRUBENV_SIGNATURE = '# GRUB Environment Block\n';

const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export type EnvVars = Record<string, string>;

/** Parses a block; throws BOOTENV_INVALID with the reason when GRUB would refuse it too. */
export function parseEnvBlock(buf: Uint8Array, where = 'grubenv'): EnvVars {
  if (buf.length !== GRUBENV_SIZE) {
    throw new IbuError('BOOTENV_INVALID', `${where} is ${buf.length} bytes, not ${GRUBENV_SIZE}: it is truncated or not a GRUB environment block.`);
  }
  const text = Buffer.from(buf).toString('latin1');
  if (!text.startsWith(GRUBENV_SIGNATURE)) {
    throw new IbuError('BOOTENV_INVALID', `${where} does not start with the GRUB environment signature: it is corrupt.`);
  }
  const vars: EnvVars = {};
  // GRUB reads lines up to the padding; a line starting with '#' is a comment or padding. A
  // value ends at the first newline not escaped by a backslash (grub-core/lib/envblk.c).
  let at = GRUBENV_SIGNATURE.length;
  while (at < text.length) {
    if (text[at] === '\n') {
      at++;
      continue;
    }
    const eol = text.indexOf('\n', at);
    if (text[at] === '#') {
      at = eol === -1 ? text.length : eol + 1;
      continue;
    }
    const eq = text.indexOf('=', at);
    if (eq === -1 || (eol !== -1 && eol < eq) || eq === at) {
      const line = text.slice(at, eol === -1 ? text.length : eol);
      throw new IbuError('BOOTENV_INVALID', `${where} has a malformed line '${line.slice(0, 40)}': it is corrupt.`);
    }
    const name = text.slice(at, eq);
    if (!NAME_RE.test(name)) throw new IbuError('BOOTENV_INVALID', `${where} has an invalid variable name '${name.slice(0, 40)}': it is corrupt.`);
    let value = '';
    for (at = eq + 1; at < text.length && text[at] !== '\n'; at++) {
      if (text[at] === '\\' && at + 1 < text.length) at++;
      value += text[at];
    }
    at++;
    // Defined, not assigned: a variable named __proto__ must stay a variable.
    Object.defineProperty(vars, name, { value, enumerable: true, writable: true, configurable: true });
  }
  return vars;
}

/** Serializes variables into a 1024-byte block in the given order (GRUB keeps its own order). */
export function formatEnvBlock(vars: EnvVars): Buffer {
  let body = GRUBENV_SIGNATURE;
  for (const [name, value] of Object.entries(vars)) {
    if (!NAME_RE.test(name)) throw new IbuError('BOOTENV_INVALID', `'${name}' is not a valid GRUB variable name.`);
    // GRUB's env is bytes, read back as latin1: a wider character would come back as another one.
    if (/[\u0100-\uffff]/.test(value)) throw new IbuError('BOOTENV_INVALID', `the value of ${name} has a character that is not one byte (latin1).`);
    body += `${name}=${escapeValue(value)}\n`;
  }
  const bytes = Buffer.from(body, 'latin1');
  if (bytes.length > GRUBENV_SIZE) {
    throw new IbuError(
      'BOOTENV_INVALID',
      `the boot environment needs ${bytes.length} bytes ` + `but a GRUB environment block holds ${GRUBENV_SIZE}; shorten the values.`,
    );
  }
  const out = Buffer.alloc(GRUBENV_SIZE, '#'.charCodeAt(0));
  bytes.copy(out);
  return out;
}

// grub-editenv escapes backslash and newline with a backslash.
function escapeValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\\n');
}

/** Reads one env file; returns the parsed vars or the reason it is unusable. */
export async function readEnvFile(file: string): Promise<{ ok: true; vars: EnvVars } | { ok: false; reason: string; missing: boolean }> {
  let buf: Buffer;
  try {
    buf = await fsp.readFile(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { ok: false, reason: `${file}: ${e.message}`, missing: e.code === 'ENOENT' };
  }
  try {
    return { ok: true, vars: parseEnvBlock(buf, file) };
  } catch (err) {
    return { ok: false, reason: (err as Error).message, missing: false };
  }
}

/**
 * Writes a block into an existing 1024-byte file in place (open r+, pwrite at 0, fsync), the way
 * GRUB's save_env does, so the file keeps its inode and blocks: GRUB, which does not replay the
 * ext4 journal, still finds it. Returns false when the file is missing or has the wrong size, so
 * the caller creates it instead (and must then checkpoint the filesystem).
 */
export async function writeEnvInPlace(file: string, block: Buffer): Promise<boolean> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, fsc.O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  try {
    const st = await fh.stat();
    if (st.size !== GRUBENV_SIZE || !st.isFile()) return false;
    const { bytesWritten } = await fh.write(block, 0, GRUBENV_SIZE, 0);
    if (bytesWritten !== GRUBENV_SIZE) throw new IbuError('IO_ERROR', `short write to ${file}: ${bytesWritten} of ${GRUBENV_SIZE} bytes.`);
    await fh.sync();
    return true;
  } finally {
    await fh.close();
  }
}
