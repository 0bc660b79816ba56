#!/usr/bin/env bash
# Builds ibu-device_<version>_amd64.deb: upgradectl (the compiled agent from dist/ plus the npm
# packages it loads, taken from this checkout's node_modules: no network), the systemd units,
# the initramfs-tools hook and boot=ibu script, /etc/grub.d/10_ibu and a default
# /etc/ibu/agent.json. debhelper writes the maintainer scripts (docs/package.md).
#   bash packaging/device/build.sh [--out DIR] [--version V]     (npm run package:device -- ...)
# Needs dist/ (tsc), dpkg-buildpackage and debhelper (scripts/install-deps.sh). Prints the path of
# the .deb on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() { echo "package:device: $*" >&2; exit 2; }

out=$repo/dist/package
version=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --version) [ $# -ge 2 ] || die "--version needs a value"; version=$2; shift 2 ;;
    *) die "unknown argument '$1' (usage: build.sh [--out DIR] [--version V])" ;;
  esac
done
[ -n "$version" ] || version=$(node -p "require('$repo/package.json').version")
# A Debian version that is also an ibu version: digits first, then letters, digits, . + ~
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "version '$version' is not a Debian version (e.g. 1.2.0)"
[ -f "$repo/dist/src/cli/upgradectl.js" ] || die "dist/ is not built: run 'npx tsc -p tsconfig.json' (npm run package:device does)"
command -v dpkg-buildpackage >/dev/null && command -v dh >/dev/null ||
  die "dpkg-buildpackage or debhelper is missing: run scripts/install-deps.sh (apt-get install dpkg-dev debhelper)"
nm=$repo/node_modules
[ -d "$nm" ] || die "node_modules is missing: run npm ci"

work=$(mktemp -d "${TMPDIR:-/tmp}/ibu-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/ibu-device-$version
root=$src/root
mkdir -p "$src"
cp -a "$here/debian" "$src/debian"

# --- upgradectl: the compiled agent and the npm packages it loads ---
lib=$root/usr/lib/ibu
mkdir -p "$lib" "$root/usr/bin"
node "$here/runtime-files.mjs" "$repo/dist/src/cli/upgradectl.js" >"$work/runtime.json"
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  process.stdout.write(r.files.join("\n") + "\n");
' "$work/runtime.json" >"$work/files"
(cd "$repo" && xargs -a "$work/files" cp --parents -t "$lib")
# package-version.ts reads the version from here (dist/src/util -> ../../../package.json)
printf '{ "name": "ibu", "version": "%s", "private": true, "type": "module" }\n' "$version" >"$lib/package.json"

# The npm packages, each with only what runs; a native addon is Node-API (ABI-stable across
# Node versions), built here for Node 20 and checked under Debian 13's nodejs by the test.
declare -A keep=(
  [commander]="package.json LICENSE index.js esm.mjs lib"
  [undici]="package.json LICENSE index.js index-fetch.js lib"
  [zstd-napi]="package.json LICENSE NOTICE binding.js dist build/Release/binding.node"
  [@napi-rs/blake-hash]="package.json LICENSE index.js"
  [@napi-rs/blake-hash-linux-x64-gnu]="package.json blake.linux-x64-gnu.node"
)
for p in $(node -p 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).packages.join(" ")' "$work/runtime.json"); do
  [ -n "${keep[$p]:-}" ] || die "upgradectl now imports '$p': add it (and its runtime dependencies) to the bundle list in $0"
done
for p in "${!keep[@]}"; do
  [ -d "$nm/$p" ] || die "$nm/$p is missing: run npm ci"
  mkdir -p "$lib/node_modules/$p"
  for f in ${keep[$p]}; do
    [ -e "$nm/$p/$f" ] || continue
    (cd "$nm/$p" && cp -a --parents "$f" "$lib/node_modules/$p/")
  done
done
find "$lib" \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' \) -delete
cat >"$root/usr/bin/upgradectl" <<'LAUNCHER'
#!/usr/bin/node
// upgradectl from the ibu-device package: Debian's nodejs runs the agent in /usr/lib/ibu.
import('/usr/lib/ibu/dist/src/cli/upgradectl.js').then((m) => m.main(process.argv.slice(2)));
LAUNCHER
chmod 0755 "$root/usr/bin/upgradectl"

# --- boot: initramfs-tools hook and boot=ibu script, the shared boot library, GRUB ---
install -D -m 0755 "$repo/assets/initramfs-tools/hooks/ibu" "$root/usr/share/initramfs-tools/hooks/ibu"
install -D -m 0644 "$repo/assets/initramfs-tools/scripts/ibu" "$root/usr/share/initramfs-tools/scripts/ibu"
install -D -m 0644 "$repo/assets/initramfs/ibu-boot.sh" "$root/usr/share/ibu/ibu-boot.sh"
install -D -m 0755 "$repo/assets/grub/10_ibu" "$root/etc/grub.d/10_ibu"

# --- systemd units and the default config ---
# debhelper 13.11 (Debian 12) looks for units in lib/systemd/system; rules moves them to usr/lib.
mkdir -p "$root/lib/systemd/system"
install -m 0644 "$repo"/assets/systemd/*.service "$repo"/assets/systemd/*.timer "$root/lib/systemd/system/"
install -D -m 0644 "$here/agent.json" "$root/etc/ibu/agent.json"
install -D -m 0644 "$repo/docs/agent.md" "$root/usr/share/doc/ibu-device/agent.md"
install -D -m 0644 "$repo/docs/package.md" "$root/usr/share/doc/ibu-device/package.md"

# --- debian/changelog for this version; the date from SOURCE_DATE_EPOCH when set (reproducible) ---
when=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")
cat >"$src/debian/changelog" <<CHANGELOG
ibu-device ($version) unstable; urgency=medium

  * ibu $version.

 -- ibu developers <ibu@example.com>  $when
CHANGELOG

(cd "$src" && nice dpkg-buildpackage -b -us -uc --no-check-builddeps >"$work/build.log" 2>&1) || {
  tail -40 "$work/build.log" >&2
  die "dpkg-buildpackage failed (log above)"
}
deb=ibu-device_${version}_amd64.deb
mkdir -p "$out"
mv "$work/$deb" "$out/$deb.tmp"
mv "$out/$deb.tmp" "$out/$deb"
echo "$(cd "$out" && pwd)/$deb"
