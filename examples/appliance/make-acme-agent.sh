#!/bin/sh
# Makes the example vendor package acme-agent VERSION into DIR with dpkg-deb (what the build test does).
set -eu
V=${1:?usage: make-acme-agent.sh VERSION DIR}; OUT=${2:?usage: make-acme-agent.sh VERSION DIR}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
mkdir -p "$T/DEBIAN" "$T/usr/bin" "$T/usr/share/acme"
cat > "$T/DEBIAN/control" <<C
Package: acme-agent
Version: $V
Architecture: all
Maintainer: ACME <dev@acme.example>
Depends: openssh-server
Priority: optional
Section: admin
Description: ACME appliance agent (example vendor package)
C
printf '#!/bin/sh\necho acme-agent %s\n' "$V" > "$T/usr/bin/acme-agent"; chmod 755 "$T/usr/bin/acme-agent"
printf 'acme-agent %s data\n' "$V" > "$T/usr/share/acme/VERSION"
mkdir -p "$OUT"
SOURCE_DATE_EPOCH=1735689600 dpkg-deb --root-owner-group -Zxz --build "$T" "$OUT/acme-agent_${V}_all.deb" >/dev/null
