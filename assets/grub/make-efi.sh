#!/usr/bin/env bash
# make-efi.sh HOST_UUID OUT.efi -- a standalone GRUB EFI binary (grub-mkstandalone, all modules
# in its memdisk) whose built-in config finds the host partition by filesystem UUID and runs
# its /boot/grub/grub.cfg (the one assets/grub/10_ibu writes). Put it on the ESP as
# \EFI\BOOT\BOOTX64.EFI (removable-media path: no NVRAM boot entry needed).
# Needs grub-efi-amd64-bin. Unsigned: Secure Boot needs shim + a signed GRUB instead.
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 HOST_FS_UUID OUT.efi" >&2; exit 2; }
uuid=$1 out=$2
case "$uuid" in *[!0-9A-Fa-f-]*|'') echo "make-efi: '$uuid' is not a filesystem UUID" >&2; exit 2 ;; esac
command -v grub-mkstandalone >/dev/null || { echo "make-efi: grub-mkstandalone missing: install grub-efi-amd64-bin" >&2; exit 1; }
cfg=$(mktemp)
trap 'rm -f "$cfg"' EXIT
# A separate variable for the search result: if the search fails, configfile must not re-read
# this memdisk config (which is what "$root/boot/grub/grub.cfg" would be).
cat > "$cfg" <<EOF
search --no-floppy --fs-uuid --set=ibu_host $uuid
if [ -n "\$ibu_host" ]; then
  set root=\$ibu_host
  configfile (\$ibu_host)/boot/grub/grub.cfg
fi
echo "ibu: no host partition with filesystem UUID $uuid (or no /boot/grub/grub.cfg on it)"
sleep 10
reboot
EOF
grub-mkstandalone -O x86_64-efi -o "$out.tmp" --locales= --fonts= --themes= --compress=xz \
  --modules="part_gpt part_msdos ext2" "boot/grub/grub.cfg=$cfg"
mv "$out.tmp" "$out"
