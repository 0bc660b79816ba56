#!/usr/bin/env bash
# make-efi.sh HOST_UUID OUT.efi -- a standalone GRUB EFI binary (grub-mkstandalone, all modules
# in its memdisk) whose built-in config finds the host partition by filesystem UUID and runs
# its /boot/grub/grub.cfg (the one assets/grub/10_ibu writes). When that file is missing or
# damaged (it returns without booting), the binary runs its own copy of the same script, made
# here by assets/grub/10_ibu with the same settings (IBU_CMDLINE, IBU_BOOT_TRIES, ... from the
# environment): a damaged grub.cfg cannot stop the device. Put it on the ESP as
# \EFI\BOOT\BOOTX64.EFI (removable-media path: no NVRAM boot entry needed).
# Needs grub-efi-amd64-bin. Unsigned: Secure Boot needs shim + a signed GRUB instead.
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 HOST_FS_UUID OUT.efi" >&2; exit 2; }
uuid=$1 out=$2
case "$uuid" in *[!0-9A-Fa-f-]*|'') echo "make-efi: '$uuid' is not a filesystem UUID" >&2; exit 2 ;; esac
command -v grub-mkstandalone >/dev/null || { echo "make-efi: grub-mkstandalone missing: install grub-efi-amd64-bin" >&2; exit 1; }
cfg=$(mktemp) ibucfg=$(mktemp)
trap 'rm -f "$cfg" "$ibucfg"' EXIT
IBU_HOST_UUID=$uuid sh "$(dirname "$0")/10_ibu" > "$ibucfg"
# An empty copy would leave GRUB at its prompt whenever the host's grub.cfg is damaged.
grep -q '^### ibu: boot ' "$ibucfg" || { echo "make-efi: assets/grub/10_ibu made no script for the built-in copy" >&2; exit 1; }
# A separate variable for the search result: if the search fails, configfile must not re-read
# this memdisk config (which is what "$root/boot/grub/grub.cfg" would be).
cat > "$cfg" <<EOF
search --no-floppy --fs-uuid --set=ibu_host $uuid
if [ -n "\$ibu_host" ]; then
  set root=\$ibu_host
  if [ -s (\$ibu_host)/boot/grub/grub.cfg ]; then configfile (\$ibu_host)/boot/grub/grub.cfg; fi
  echo "ibu: /boot/grub/grub.cfg on the host is missing or booted nothing; using the built-in copy"
else
  echo "ibu: no host partition with filesystem UUID $uuid"
fi
# The built-in copy ends in a reboot when it finds nothing to boot.
source (memdisk)/boot/grub/ibu.cfg
EOF
grub-mkstandalone -O x86_64-efi -o "$out.tmp" --locales= --fonts= --themes= --compress=xz \
  --modules="part_gpt part_msdos ext2" "boot/grub/grub.cfg=$cfg" "boot/grub/ibu.cfg=$ibucfg"
mv "$out.tmp" "$out"
