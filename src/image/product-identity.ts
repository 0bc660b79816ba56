import { createHash } from 'node:crypto';

/** The default product name when `--product` is not given. */
export const DEFAULT_PRODUCT = 'ibu';

/**
 * The filesystem identity of every image of one product: UUID and directory hash seed are
 * derived from the product name, so two builds of the same tree are byte-identical and every
 * release of a product carries the same UUID (GRUB and fstab entries stay valid across upgrades).
 */
export interface ProductIdentity {
  product: string;
  uuid: string;
  hashSeed: string;
}

export function productIdentity(product: string): ProductIdentity {
  return { product, uuid: uuidFrom(`ibu-fs-uuid:${product}`), hashSeed: uuidFrom(`ibu-hash-seed:${product}`) };
}

/** An RFC 4122 version-8 (custom) UUID from the first 16 bytes of sha256(text). */
function uuidFrom(text: string): string {
  const b = createHash('sha256').update(text).digest().subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x80;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
