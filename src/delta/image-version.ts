import { Ext4Reader } from '../image/ext4/index.js';
import { IMAGE_INFO_PATH } from '../image/image-info.js';

/** The version an image says it is (`/etc/ibu/image.json`), or 'unknown' when it says nothing readable. */
export function versionOf(reader: Ext4Reader): string {
  try {
    const info = JSON.parse(reader.readFile(IMAGE_INFO_PATH).toString('utf8')) as { version?: unknown };
    return typeof info.version === 'string' && info.version !== '' ? info.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Like versionOf, for an image file that may not even be ext4 (a device's running image, a wrong file). */
export function versionOfImage(path: string): string {
  let reader: Ext4Reader | undefined;
  try {
    reader = Ext4Reader.open(path);
    return versionOf(reader);
  } catch {
    return 'unknown';
  } finally {
    reader?.close();
  }
}
