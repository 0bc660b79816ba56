#!/usr/bin/env bash
# Builds (once) the image pairs of the compressed-file delta benchmark (issue #20,
# bench/delta-compressed.ts) from real Debian packages: each image is the packages' files
# unpacked with dpkg-deb -x and made into ext4 with mke2fs -d (fixed UUID, hash seed and time),
# as the issue did. No Debian root is needed, only .debs from deb.debian.org, fetched with a
# private apt configuration (the host's apt lists are left alone).
#
#   trixie-kernel     linux-image-6.12.117+deb13-amd64 → 6.12.118+deb13 (4,230 .ko.xz modules, a new ABI directory)
#   bookworm-kernel   linux-image-6.1.0-56-amd64 (6.1.192-2) → 6.1.0-57 (6.1.192-3) (uncompressed .ko)
#   bookworm-security openssl, libssl3, python3.11, perl, libexpat1, libpng16: bookworm → bookworm-security
#
# Images go to $IBU_BENCH_DIR/deb-pairs/<pair>/{a,b}.img (default /var/cache/ibu-bench), keyed by
# the package versions (pair.key); a pair is rebuilt only when its key changes.
#
#   trixie-zstd       not a pair: trixie's own zstd binary (with its libzstd1), unpacked to
#                     deb-pairs/tools/zstd-<version>/; prints the directory. The initrd pairs
#                     (bench/lib/initrd-pair-images.ts) re-write the main archive with it, as
#                     mkinitramfs does on a trixie machine (Debian 12's zstd 1.5.4 writes other bytes).
# Usage: bench/lib/deb-pair-images.sh [trixie-kernel|bookworm-kernel|bookworm-security|all|trixie-zstd]
set -euo pipefail

BENCH_DIR=${IBU_BENCH_DIR:-/var/cache/ibu-bench}
OUT=$BENCH_DIR/deb-pairs
APT=$BENCH_DIR/deb-pairs/apt
mkdir -p "$OUT" "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
exec 8>"$OUT/.lock"
flock 8

cat >"$APT/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security trixie-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
EOF
cat >"$APT/apt.conf" <<EOF
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$APT/lists";
Dir::Cache "$APT/cache";
Dir::State::status "$APT/status";
APT::Architecture "amd64";
EOF
touch "$APT/status"
export APT_CONFIG=$APT/apt.conf
updated=
aptget() {
  [ -n "$updated" ] || { apt-get -qq update; updated=1; }
  (cd "$APT/debs" && apt-get -qq download "$@" 2>/dev/null)
}

# image NAME SIDE PKG=VERSION...
side() {
  local dir=$OUT/$1 s=$2
  shift 2
  local root=$dir/root-$s
  rm -rf "$root" && mkdir -p "$root"
  for spec in "$@"; do
    local name=${spec%%=*} ver=${spec#*=}
    local file
    file=$(ls "$APT/debs/${name}_${ver#*:}_"*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$file" ]; then
      aptget "$spec"
      file=$(ls "$APT/debs/${name}_${ver#*:}_"*.deb | head -n1)
    fi
    dpkg-deb -x "$file" "$root"
  done
  rm -f "$dir/$s.img"
  E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 -b 4096 -U 6f1d2c3b-1111-4222-8333-944455556666 \
    -E hash_seed=6f1d2c3b-aaaa-4bbb-8ccc-dddd00001111,root_owner=0:0 -d "$root" "$dir/$s.img" "$SIZE"
  rm -rf "$root"
}

# pair NAME SIZE "A packages" "B packages"
pair() {
  local name=$1 dir=$OUT/$1
  SIZE=$2
  local key="$3 -> $4 size $SIZE"
  mkdir -p "$dir"
  if [ -f "$dir/a.img" ] && [ -f "$dir/b.img" ] && [ "$(cat "$dir/pair.key" 2>/dev/null)" = "$key" ]; then
    echo "deb-pair-images: $name exists, skipped"
    return
  fi
  echo "deb-pair-images: building $name"
  # shellcheck disable=SC2086
  side "$name" a $3
  # shellcheck disable=SC2086
  side "$name" b $4
  echo "$key" >"$dir/pair.key"
  echo "deb-pair-images: $dir ready"
}

trixie_kernel() {
  pair trixie-kernel 1G "linux-image-6.12.117+deb13-amd64=6.12.117-1" "linux-image-6.12.118+deb13-amd64=6.12.118-1"
}
bookworm_kernel() {
  pair bookworm-kernel 1G "linux-image-6.1.0-56-amd64=6.1.192-2" "linux-image-6.1.0-57-amd64=6.1.192-3"
}
bookworm_security() {
  local a="openssl=3.0.20-1~deb12u2 libssl3=3.0.20-1~deb12u2 python3.11-minimal=3.11.2-6+deb12u8 libpython3.11-minimal=3.11.2-6+deb12u8
    libpython3.11-stdlib=3.11.2-6+deb12u8 perl-base=5.36.0-7+deb12u3 libperl5.36=5.36.0-7+deb12u3 libexpat1=2.5.0-1+deb12u2 libpng16-16=1.6.39-2+deb12u5"
  local b="openssl=3.0.22-1~deb12u2 libssl3=3.0.22-1~deb12u2 python3.11-minimal=3.11.2-6+deb12u9 libpython3.11-minimal=3.11.2-6+deb12u9
    libpython3.11-stdlib=3.11.2-6+deb12u9 perl-base=5.36.0-7+deb12u4 libperl5.36=5.36.0-7+deb12u4 libexpat1=2.5.0-1+deb12u5 libpng16-16=1.6.39-2+deb12u6"
  pair bookworm-security 512M "$(echo $a)" "$(echo $b)"
}

TRIXIE_ZSTD=1.5.7+dfsg-1+deb13u1
trixie_zstd() {
  local dir=$OUT/tools/zstd-$TRIXIE_ZSTD
  if [ ! -x "$dir/usr/bin/zstd" ]; then
    local f
    for p in zstd libzstd1; do
      f=$(ls "$APT/debs/${p}_${TRIXIE_ZSTD}_"*.deb 2>/dev/null | head -n1 || true)
      [ -n "$f" ] || aptget "$p=$TRIXIE_ZSTD"
    done
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    for p in zstd libzstd1; do dpkg-deb -x "$(ls "$APT/debs/${p}_${TRIXIE_ZSTD}_"*.deb | head -n1)" "$dir.tmp"; done
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

case "${1:-all}" in
  trixie-kernel) trixie_kernel ;;
  bookworm-kernel) bookworm_kernel ;;
  bookworm-security) bookworm_security ;;
  all) trixie_kernel; bookworm_kernel; bookworm_security ;;
  trixie-zstd) trixie_zstd ;;
  *) echo "usage: $0 [trixie-kernel|bookworm-kernel|bookworm-security|all|trixie-zstd]" >&2; exit 2 ;;
esac
