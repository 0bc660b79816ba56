#!/usr/bin/env bash
# make-disk.sh -- a GPT disk image for the e2e boots, built as plain files (no mounts, no loop
# devices): p1 = ESP (FAT32 made with mtools) holding \EFI\BOOT\BOOTX64.EFI, p2 = the ext4 "host"
# partition made with mke2fs -d from a directory (boot/grub/grub.cfg, grubenv, images/*.img).
#
#   make-disk.sh --efi BOOTX64.EFI --host-tree DIR --host-uuid UUID --host-mib N --out disk.img
#
# The host partition starts at 1 MiB + ESP_MIB MiB; the offset in bytes is printed as
# HOST_OFFSET=<n> so e2fsprogs can work on "disk.img?offset=<n>".
set -euo pipefail
ESP_MIB=64
EFI= TREE= UUID= HOST_MIB= OUT=
while [ $# -gt 0 ]; do
  case $1 in
  --efi) EFI=$2; shift 2 ;;
  --host-tree) TREE=$2; shift 2 ;;
  --host-uuid) UUID=$2; shift 2 ;;
  --host-mib) HOST_MIB=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  *) echo "make-disk: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -f "$EFI" ] && [ -d "$TREE" ] && [ -n "$UUID" ] && [ -n "$HOST_MIB" ] && [ -n "$OUT" ] ||
  { echo "make-disk: need --efi FILE --host-tree DIR --host-uuid UUID --host-mib N --out FILE" >&2; exit 2; }
esp_start=2048                                  # sectors
esp_sectors=$((ESP_MIB * 2048))
host_start=$((esp_start + esp_sectors))
host_sectors=$((HOST_MIB * 2048))
total=$((host_start + host_sectors + 2048))     # + room for the backup GPT
tmp=$(mktemp -d "$OUT.parts.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

truncate -s $((esp_sectors * 512)) "$tmp/esp.img"
mformat -i "$tmp/esp.img" -F -v ESP -N B0071AB0 -H $esp_start -T $esp_sectors -h 64 -s 32 ::
mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$tmp/esp.img" "$EFI" ::/EFI/BOOT/BOOTX64.EFI

# 4 KiB blocks (mke2fs picks 1 KiB below 512 MiB): the layout real host partitions have
mke2fs -q -F -t ext4 -b 4096 -L ibu-host -U "$UUID" -E root_owner=0:0 -d "$TREE" "$tmp/host.img" "${HOST_MIB}M"

rm -f "$OUT"
truncate -s $((total * 512)) "$OUT"
sfdisk -q "$OUT" <<EOF
label: gpt
label-id: 8A1B2C3D-0000-4000-8000-00000000D15C
unit: sectors
first-lba: 2048

start=$esp_start, size=$esp_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=8A1B2C3D-0001-4000-8000-0000000000E5, name="EFI system partition"
start=$host_start, size=$host_sectors, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=8A1B2C3D-0002-4000-8000-00000000B057, name="ibu-host"
EOF
dd if="$tmp/esp.img" of="$OUT" bs=512 seek=$esp_start conv=notrunc,sparse status=none
dd if="$tmp/host.img" of="$OUT" bs=1M seek=$((host_start / 2048)) conv=notrunc,sparse status=none
echo "HOST_OFFSET=$((host_start * 512))"
