#!/usr/bin/env bash
# Benchmark of `ibu build` on the example appliance (examples/appliance, docs/build.md):
#   1. `ibu build` from a warm pool  vs the anchor: mmdebstrap alone, same packages, same pool
#      repository, no hooks, no image;
#   2. a security pickup: lock A = the trixie release pocket only, lock B = + trixie-security and
#      trixie-updates (the fortnightly `lock --update`); B built with --previous A. The ibu delta
#      A→B beside xdelta3 on the same images and the changed files' compressed size (tar | zstd -19).
# One run each (mmdebstrap dominates and the machine is shared). Needs root, network for the
# locks. Results (markdown) go to stdout and to $OUT (default /var/cache/ibu-build/bench.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${OUT:-/var/cache/ibu-build/bench.md}
W=$(mktemp -d /tmp/ibu-bench-appliance.XXXXXX)
MNT=$W/mnt
cleanup() { mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"; rm -rf "$W"; }
trap cleanup EXIT
cd "$REPO"
npx --no-install tsc -p tsconfig.json
ibu() { node "$REPO/bin/ibu" "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

cp -r examples/appliance "$W/app"
"$W/app/make-acme-agent.sh" 1.0 "$W/app/vendor"
B_SPEC=$W/app/product.yaml
A_SPEC=$W/app/release-pocket.yaml
# A: the same appliance from the release pocket alone (what the archive had at the point release).
python3 - "$B_SPEC" "$A_SPEC" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r"mirrors:\n(  .*\n)+", "mirrors:\n  - uri: http://deb.debian.org/debian\n    suites: [trixie]\n", s)
open(sys.argv[2], "w").write(s)
PY

t0=$(now); ibu build lock --spec "$A_SPEC" --out "$W/A.lock" >"$W/lock-a.txt"; t1=$(now)
ibu build lock --spec "$B_SPEC" --out "$W/B.lock" >"$W/lock-b.txt"; t2=$(now)
lock_a=$(elapsed "$t0" "$t1"); lock_b=$(elapsed "$t1" "$t2")

t0=$(now); ibu build --spec "$A_SPEC" --lock "$W/A.lock" --version 2026.12.1 --out "$W/A.img" >/dev/null; t1=$(now)
build_a=$(elapsed "$t0" "$t1")

# The anchor: mmdebstrap alone from the same pool repository (ibu's flat repo of lock A).
node --input-type=module -e "
import { readFileSync } from 'node:fs';
import { parseLock } from '$REPO/dist/src/build/lock-file.js';
import { PackagePool, poolDir } from '$REPO/dist/src/build/package-pool.js';
import { makeFlatRepo } from '$REPO/dist/src/build/flat-repo.js';
const lock = parseLock(readFileSync('$W/A.lock', 'utf8'));
const pool = new PackagePool(poolDir());
await makeFlatRepo('$W/repo', lock.packages.map((p) => ({ file: pool.pathOf(p.sha256), name: p.name, version: p.version, architecture: p.architecture,
  ...(p.origin === 'mirror' ? { priority: p.priority, section: p.section } : {}) })), 'trixie');
"
include=$(node --input-type=module -e "
import { readFileSync } from 'node:fs';
import { parseProductSpec } from '$REPO/dist/src/build/product-spec.js';
const s = parseProductSpec(readFileSync('$A_SPEC', 'utf8'));
process.stdout.write([...s.packages, s.kernel].join(','));
")
t0=$(now)
SOURCE_DATE_EPOCH=1735689600 mmdebstrap --mode=root --variant=minbase --include="$include" --format=directory \
  --aptopt='Acquire::Check-Valid-Until "false"' trixie "$W/alone" "deb [trusted=yes] copy://$W/repo ./" >"$W/alone.log" 2>&1
t1=$(now)
alone=$(elapsed "$t0" "$t1")
rm -rf "$W/alone"

t0=$(now); ibu build --spec "$B_SPEC" --lock "$W/B.lock" --version 2026.12.2 --out "$W/B.img" --previous "$W/A.img" >/dev/null; t1=$(now)
build_b=$(elapsed "$t0" "$t1")

changes=$(ibu release diff "$W/A.img" "$W/B.img" --json)
n_pk=$(echo "$changes" | node -e "const d=JSON.parse(require('fs').readFileSync(0,'utf8'));const p=d.packages;console.log(p.upgraded.length+p.added.length+p.removed.length)")
echo "$changes" | node -e "const d=JSON.parse(require('fs').readFileSync(0,'utf8'));for(const f of [...d.files.changed,...d.files.added])console.log('.'+f)" >"$W/changed.txt"
n_files=$(wc -l <"$W/changed.txt")

t0=$(now); ibu delta make --from "$W/A.img" --to "$W/B.img" --out "$W/AB.ibudelta" >/dev/null; t1=$(now)
delta_t=$(elapsed "$t0" "$t1"); delta_b=$(stat -c %s "$W/AB.ibudelta")
t0=$(now); xdelta3 -e -9 -f -s "$W/A.img" "$W/B.img" "$W/AB.xd3"; t1=$(now)
xd_t=$(elapsed "$t0" "$t1"); xd_b=$(stat -c %s "$W/AB.xd3")
mkdir -p "$MNT"; mount -o loop,ro "$W/B.img" "$MNT"
files_b=$(tar -C "$MNT" --no-recursion -cf - -T "$W/changed.txt" | zstd -19 -q -c | wc -c)
umount "$MNT"

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
{
  echo "| step | seconds |"
  echo "|---|---|"
  echo "| \`ibu build lock\`, release pocket (network) | $lock_a |"
  echo "| \`ibu build lock\`, + security + updates (network) | $lock_b |"
  echo "| \`ibu build\` from the warm pool (fresh layout) | $build_a |"
  echo "| anchor: mmdebstrap alone, same packages and pool repository | $alone |"
  echo "| \`ibu build --previous\` of the security pickup | $build_b |"
  echo
  echo "Security pickup: $n_pk package changes, $n_files changed or added files."
  echo
  echo "| A→B | bytes | time (s) |"
  echo "|---|---|---|"
  echo "| ibu delta | $delta_b ($(mib "$delta_b")) | $delta_t |"
  echo "| xdelta3 -9 | $xd_b ($(mib "$xd_b")) | $xd_t |"
  echo "| changed files, tar \\| zstd -19 | $files_b ($(mib "$files_b")) | |"
} | tee "$OUT"
