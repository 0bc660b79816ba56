#!/usr/bin/env bash
# stage-node-root.sh -- a root tree for an ibu image whose userland runs the real upgradectl:
# busybox-static, the host's node binary with the libraries ldd names (+ the loader), the
# ibu project (package.json, bin/, dist/, production node_modules) at /opt/ibu, kernel modules
# for virtio-net and virtio-rng, /vmlinuz + /initrd.img, and test/e2e/node-init.sh as /sbin/init.
#
#   stage-node-root.sh --out DIR --version V --vmlinuz FILE --initrd FILE --modules-dir DIR [--e2fsck FILE] [--project DIR]
# (--e2fsck: a static e2fsck for the agent's `e2fsck -n` of downloads; busybox has none)
#
# The project must be built (dist/ from `npm ci` or `tsc`). Native addons (better-sqlite3,
# zstd-napi) were compiled against this host's glibc, which is what gets copied in.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT=$(cd "$HERE/../.." && pwd -P)
OUT= VERSION= VMLINUZ= INITRD= MODDIR= E2FSCK=
NODE=$(command -v node)
while [ $# -gt 0 ]; do
  case $1 in
  --out) OUT=$2; shift 2 ;;
  --version) VERSION=$2; shift 2 ;;
  --vmlinuz) VMLINUZ=$2; shift 2 ;;
  --initrd) INITRD=$2; shift 2 ;;
  --modules-dir) MODDIR=$2; shift 2 ;;
  --project) PROJECT=$2; shift 2 ;;
  --e2fsck) E2FSCK=$2; shift 2 ;;
  *) echo "stage-node-root: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] && [ -n "$VERSION" ] && [ -f "$VMLINUZ" ] && [ -f "$INITRD" ] && [ -d "$MODDIR" ] ||
  { echo "stage-node-root: need --out DIR --version V --vmlinuz FILE --initrd FILE --modules-dir DIR" >&2; exit 2; }
[ -f "$PROJECT/dist/src/cli/upgradectl.js" ] || { echo "stage-node-root: $PROJECT/dist is not built: run npm ci (or npx tsc)" >&2; exit 1; }
KVER=$(basename "$MODDIR")

rm -rf "$OUT"
mkdir -p "$OUT"/{bin,sbin,usr/bin,etc/ibu-e2e,dev,proc,sys,host,tmp,run,root,mnt,var/lib,opt/ibu,lib/ibu,"lib/modules/$KVER"}
cp /bin/busybox "$OUT/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$OUT/bin/$a"; done
cp "$NODE" "$OUT/usr/bin/node"
# every absolute path ldd prints (libraries and the loader), symlinks resolved
for f in $(ldd "$NODE" | grep -o '/[^ ]*'); do mkdir -p "$OUT${f%/*}"; cp -L "$f" "$OUT$f"; done
# no modules.dep in the image: node-init.sh insmods these in this order
for m in failover net_failover virtio_net virtio-rng; do
  f=$(find "$MODDIR/kernel" -name "$m.ko" -print -quit)
  [ -n "$f" ] || { echo "stage-node-root: module $m.ko not found in $MODDIR" >&2; exit 1; }
  cp "$f" "$OUT/lib/modules/$KVER/"
done

# the ibu project: what `npm ci --omit=dev` would leave, without compiler intermediates
cp "$PROJECT/package.json" "$OUT/opt/ibu/"
cp -r "$PROJECT/bin" "$PROJECT/assets" "$OUT/opt/ibu/"
mkdir -p "$OUT/opt/ibu/dist"
cp -r "$PROJECT/dist/src" "$OUT/opt/ibu/dist/src"
(cd "$PROJECT" && npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2) | while read -r dir; do
  rel=${dir#"$PROJECT"/}
  case $rel in node_modules/*) ;; *) continue ;; esac
  mkdir -p "$OUT/opt/ibu/$rel"
  rsync -a --exclude=/node_modules --exclude=/deps --exclude='build/Release/obj*' \
    --exclude='build/Release/.deps' --exclude='build/Release/*.a' --exclude='build/Release/test_extension.node' \
    "$dir/" "$OUT/opt/ibu/$rel/"
done
if [ -n "$E2FSCK" ]; then cp "$E2FSCK" "$OUT/sbin/e2fsck"; ln -s e2fsck "$OUT/sbin/fsck.ext4"; fi
# native addons may need more libraries than node itself (blake-hash: librt)
find "$OUT/opt/ibu/node_modules" -name '*.node' -type f | while read -r addon; do
  for f in $(ldd "$addon" 2>/dev/null | grep -o '/[^ ]*'); do
    [ -e "$OUT$f" ] || { mkdir -p "$OUT${f%/*}"; cp -L "$f" "$OUT$f"; }
  done
done
# kexec (the agent's kexec switch, issue #18) and dmsetup (a device-mapper device suspended under a
# reader: the stuck-reboot test) from the host, with the libraries ldd names; dm-mod for the latter
for tool in kexec dmsetup; do
  t=$(command -v "$tool") || { echo "stage-node-root: $tool not found (scripts/install-deps.sh)" >&2; exit 1; }
  cp -L "$t" "$OUT/sbin/$tool"
  for f in $(ldd "$t" | grep -o '/[^ ]*'); do [ -e "$OUT$f" ] || { mkdir -p "$OUT${f%/*}"; cp -L "$f" "$OUT$f"; }; done
done
cp "$MODDIR/kernel/drivers/md/dm-mod.ko" "$OUT/lib/modules/$KVER/"
ln -s /opt/ibu/bin/upgradectl "$OUT/usr/bin/upgradectl"
ln -s /opt/ibu/bin/ibu "$OUT/usr/bin/ibu"

install -m 755 "$HERE/node-init.sh" "$OUT/sbin/init"
cp "$PROJECT/assets/initramfs/ibu-boot.sh" "$OUT/lib/ibu/ibu-boot.sh"
echo "$VERSION" > "$OUT/etc/ibu-e2e/version"
echo '127.0.0.1 localhost' > "$OUT/etc/hosts"      # else "localhost" is EAI_AGAIN (no DNS)
echo 'root:x:0:0:root:/root:/bin/sh' > "$OUT/etc/passwd"   # os.homedir() needs it
echo 'root:x:0:' > "$OUT/etc/group"
cp "$VMLINUZ" "$OUT/vmlinuz"
cp "$INITRD" "$OUT/initrd.img"
echo "stage-node-root: $OUT: $(du -sm "$OUT" | cut -f1) MiB (node $("$NODE" --version), ibu $(du -sm "$OUT/opt/ibu" | cut -f1) MiB)"
