#!/usr/bin/env bash
# Benchmark of `ibu image build` on real Debian roots (bench/lib/debian-roots.sh):
#   1. fresh build of roots/base (2 GiB image)       vs the anchor `mke2fs -d` alone on the same tree
#   2. --previous build of roots/security on base.img vs the anchor: the bare proven pipeline
#      (cp --sparse, mount, rsync --checksum --inplace --delete, fstrim, umount) with no pinning
#   3. how many 4 KiB blocks differ from base.img: security built with --previous vs fresh
# Median of $RUNS runs (default 3) of each, all in the same run. Needs root. Results (markdown)
# go to stdout and to $OUT (default /var/cache/ibu-bench/image-build.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BENCH_DIR=${IBU_BENCH_DIR:-/var/cache/ibu-bench}
ROOTS=$BENCH_DIR/roots
RUNS=${RUNS:-3}
OUT=${OUT:-$BENCH_DIR/image-build.md}
SIZE=2G
W=$(mktemp -d /tmp/ibu-bench-build.XXXXXX)
MNT=$W/mnt
cleanup() { mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"; rm -rf "$W"; }
trap cleanup EXIT

bash "$HERE/lib/debian-roots.sh" all >/dev/null
bash "$HERE/lib/debian-images.sh" base >/dev/null
BASE_IMG=$BENCH_DIR/images/base.img
cd "$REPO"
ibu() { npx --no-install tsx bench/lib/ibu-dev.ts "$@"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
declare -A T
add() { T[$1]+="$2"$'\n'; }

for i in $(seq 1 "$RUNS"); do
  # Anchor 1: mke2fs -d alone, same tree, same size and options, no pinning, no checks, no hash.
  rm -f "$W/anchor.img"; truncate -s $SIZE "$W/anchor.img"
  t0=$(now); LC_ALL=C E2FSPROGS_FAKE_TIME=1577836800 mke2fs -q -F -t ext4 -b 4096 -E lazy_itable_init=0 -d "$ROOTS/base" "$W/anchor.img"; t1=$(now)
  add mkfs "$(elapsed "$t0" "$t1")"

  t0=$(now); IBU_BUILD_TIMINGS=1 ibu image build --root "$ROOTS/base" --version 2026.11.1 --size $SIZE --product ibu-bench --out "$W/fresh.img" --json >"$W/fresh.json" 2>"$W/fresh.timings"; t1=$(now)
  add fresh "$(elapsed "$t0" "$t1")"

  # Anchor 2: the bare --previous pipeline.
  t0=$(now)
  cp --sparse=always "$BASE_IMG" "$W/bare.img"; mkdir -p "$MNT"
  mount -o loop,noatime "$W/bare.img" "$MNT"
  rsync -aHAX --numeric-ids --delete --checksum --inplace --no-whole-file --exclude=/lost+found --exclude=/etc/ibu/image.json "$ROOTS/security/" "$MNT/"
  fstrim "$MNT"; umount "$MNT"; e2fsck -fy "$W/bare.img" >/dev/null || [ $? -le 1 ]
  t1=$(now)
  add bare "$(elapsed "$t0" "$t1")"

  t0=$(now); IBU_BUILD_TIMINGS=1 ibu image build --root "$ROOTS/security" --version 2026.11.2 --size $SIZE --product ibu-bench --previous "$BASE_IMG" --out "$W/prev.img" --json >"$W/prev.json" 2>"$W/prev.timings"; t1=$(now)
  add prev "$(elapsed "$t0" "$t1")"
  sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p' "$W/prev.json" >>"$W/prev.shas"
  rm -f "$W/bare.img" "$W/anchor.img"
done

ibu image build --root "$ROOTS/security" --version 2026.11.2 --size $SIZE --product ibu-bench --out "$W/sec-fresh.img" --json >/dev/null
D_PREV=$(npx --no-install tsx bench/lib/block-diff.ts "$BASE_IMG" "$W/prev.img")
D_FRESH=$(npx --no-install tsx bench/lib/block-diff.ts "$BASE_IMG" "$W/sec-fresh.img")
D_SELF=$(npx --no-install tsx bench/lib/block-diff.ts "$W/prev.img" "$W/sec-fresh.img")
field() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" <<<"$1"; }
mib() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1048576 }'; }

{
  echo "Machine: $(nproc) cores, $(. /etc/os-release; echo "$PRETTY_NAME"), Node $(node --version), $(mke2fs -V 2>&1 | head -1), kernel $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "Inputs: roots/base $(numfmt --to=iec <"$ROOTS/base.done") in $(find "$ROOTS/base" | wc -l) entries; roots/security = base + apt-get upgrade ($(wc -l <"$ROOTS/security.changes.txt") packages); image size $SIZE"
  echo "Command: \`npm run bench:image-build\` (bench/image-build.sh), median of $RUNS runs each"
  echo
  echo "| what | median s | runs (s) |"
  echo "|---|---|---|"
  echo "| anchor: \`mke2fs -d\` alone, base root | $(median <<<"${T[mkfs]}") | $(echo ${T[mkfs]}) |"
  echo "| \`ibu image build\` fresh, base root | $(median <<<"${T[fresh]}") | $(echo ${T[fresh]}) |"
  echo "| anchor: bare cp+mount+rsync+fstrim+umount+e2fsck, security on base.img | $(median <<<"${T[bare]}") | $(echo ${T[bare]}) |"
  echo "| \`ibu image build --previous base.img\`, security root | $(median <<<"${T[prev]}") | $(echo ${T[prev]}) |"
  echo
  echo "Phases of the last fresh build (IBU_BUILD_TIMINGS=1): $(sed -n 's/^timing: //p' "$W/fresh.timings" | paste -sd, | sed 's/,/, /g')"
  echo
  echo "Phases of the last --previous build: $(sed -n 's/^timing: //p' "$W/prev.timings" | paste -sd, | sed 's/,/, /g')"
  echo
  echo "| 4 KiB blocks differing from base.img | blocks | MiB |"
  echo "|---|---|---|"
  echo "| security.img built with --previous | $(field "$D_PREV" differing) | $(mib "$(field "$D_PREV" differingBytes)") |"
  echo "| security.img built fresh | $(field "$D_FRESH" differing) | $(mib "$(field "$D_FRESH" differingBytes)") |"
  echo "| (--previous vs fresh security.img) | $(field "$D_SELF" differing) | $(mib "$(field "$D_SELF" differingBytes)") |"
  echo
  echo "--previous output identical across the $RUNS runs: $([ "$(sort -u "$W/prev.shas" | wc -l)" = 1 ] && echo "yes (sha256 $(head -1 "$W/prev.shas"))" || echo "NO ($(sort -u "$W/prev.shas" | wc -l) distinct)")"
} | tee "$OUT"
