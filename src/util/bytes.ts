/** Human byte counts for messages and progress lines: one formatter, so every command reads alike. */
export function formatBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Always in MiB (one decimal), for figures compared side by side (sizes of one image, a disk). */
export function mib(n: number): string {
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}
