#!/usr/bin/env bash
# Builds (once) and reuses the benchmark images from the Debian roots of debian-roots.sh:
#   base.img            2026.11.1  fresh layout from roots/base
#   security.img        2026.11.2  roots/security, --previous base.img (a security-update pair)
#   kernel.img          2026.11.3  roots/kernel,   --previous base.img (a kernel-update pair)
#   security-fresh.img  2026.11.2  roots/security, fresh layout (what --previous saves)
# All 2 GiB, product "ibu-bench", under $IBU_BENCH_DIR/images/ (default /var/cache/ibu-bench).
# An image is rebuilt only when missing or older than its root. images.txt lists them with
# version and sha256. Concurrent callers wait on a lock. Needs root (roots, --previous mounts).
#
# Usage: bench/lib/debian-images.sh [base|security|kernel|security-fresh|all]   (default all)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BENCH_DIR=${IBU_BENCH_DIR:-/var/cache/ibu-bench}
ROOTS=$BENCH_DIR/roots
IMAGES=$BENCH_DIR/images
SIZE=${IBU_BENCH_IMAGE_SIZE:-2G}
PRODUCT=ibu-bench

mkdir -p "$IMAGES"
exec 8>"$IMAGES/.lock"
flock 8

ibu() { (cd "$REPO" && nice npx --no-install tsx bench/lib/ibu-dev.ts "$@"); }

# name root version [previous-image-name]
build() {
  local name=$1 root=$2 version=$3 prev=${4:-} out=$IMAGES/$1.img
  bash "$HERE/debian-roots.sh" "$root" >/dev/null
  if [ -f "$out" ] && [ "$out" -nt "$ROOTS/$root.done" ] && { [ -z "$prev" ] || [ "$out" -nt "$IMAGES/$prev.img" ]; }; then
    echo "debian-images: $name.img exists, skipped"
    return
  fi
  local args=(image build --root "$ROOTS/$root" --version "$version" --size "$SIZE" --product "$PRODUCT" --out "$out" --json)
  [ -n "$prev" ] && args+=(--previous "$IMAGES/$prev.img")
  echo "debian-images: building $name.img from roots/$root${prev:+ with --previous $prev.img}"
  ibu "${args[@]}" >"$IMAGES/$name.json"
  grep -v "^$name.img " "$IMAGES/images.txt" 2>/dev/null >"$IMAGES/images.txt.tmp" || true
  echo "$name.img $version $(sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p' "$IMAGES/$name.json")" >>"$IMAGES/images.txt.tmp"
  sort "$IMAGES/images.txt.tmp" >"$IMAGES/images.txt" && rm -f "$IMAGES/images.txt.tmp"
  echo "debian-images: $out ready"
}

case "${1:-all}" in
  base) build base base 2026.11.1 ;;
  security) build base base 2026.11.1; build security security 2026.11.2 base ;;
  kernel) build base base 2026.11.1; build kernel kernel 2026.11.3 base ;;
  security-fresh) build security-fresh security 2026.11.2 ;;
  all)
    build base base 2026.11.1
    build security security 2026.11.2 base
    build kernel kernel 2026.11.3 base
    build security-fresh security 2026.11.2
    ;;
  *) echo "usage: $0 [base|security|kernel|security-fresh|all]" >&2; exit 2 ;;
esac
