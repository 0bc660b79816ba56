import { IMAGE_INFO_PATH } from './tree-source.js';

export { IMAGE_INFO_PATH };

/**
 * `/etc/ibu/image.json`: what an image says about itself. Everything in it follows from the
 * inputs, so it never breaks reproducibility: no wall-clock time, no host name.
 */
export interface ImageInfo {
  format: 1;
  product: string;
  version: string;
  /** Image file size in bytes (the ext4 filesystem fills it). */
  size: number;
  /** The version whose layout this image kept (`--previous`), or null for a fresh layout. */
  previousVersion: string | null;
  /** Every timestamp in the image, in seconds since the epoch (SOURCE_DATE_EPOCH or the default). */
  sourceDateEpoch: number;
  /** sha256 over the source tree's paths, types, modes, owners and contents (see tree-source.ts). */
  treeDigest: string;
  /** In-image paths of the kernel and initramfs /vmlinuz and /initrd.img point at; null with --no-kernel. */
  kernel: { vmlinuz: string; initrd: string } | null;
  builder: { name: 'ibu'; version: string };
}

export function imageInfoJson(info: ImageInfo): string {
  return JSON.stringify(info, null, 2) + '\n';
}

export function parseImageInfo(text: string): ImageInfo {
  return JSON.parse(text) as ImageInfo;
}
