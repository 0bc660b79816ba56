#!/bin/sh
# Makes the example vendor package acme-agent VERSION into DIR with dpkg-deb (what the tests do).
#   make-acme-agent.sh VERSION DIR [broken]
# The package ships a daemon, /usr/bin/acme-agent, its unit acme-agent.service (enabled by the
# spec) and a health check, `acme-agent --check`. "broken" makes a release whose daemon exits at
# start (the unit fails): the e2e's release that must roll back by itself.
set -eu
V=${1:?usage: make-acme-agent.sh VERSION DIR [broken]}; OUT=${2:?usage: make-acme-agent.sh VERSION DIR [broken]}
BROKEN=${3:-}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
chmod 755 "$T" # the package root is /: dpkg-deb records its mode
mkdir -p "$T/DEBIAN" "$T/usr/bin" "$T/usr/share/acme" "$T/usr/lib/systemd/system"
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
# The daemon reads the device's own config (/etc/acme/acme.conf, kept across upgrades by the
# agent's migration list) and says so on the console, so the e2e can time the service.
cat > "$T/usr/bin/acme-agent" <<S
#!/bin/sh
case "\${1:-}" in
--check) exec systemctl is-active --quiet acme-agent.service ;;
--version) echo "acme-agent $V"; exit 0 ;;
esac
echo "acme-agent $V starting (\$(grep -c . /etc/acme/acme.conf 2>/dev/null || echo 0) config lines)"
S
if [ "$BROKEN" = broken ]; then
  printf 'echo "acme-agent %s: cannot start: this build is broken" >&2\nexit 3\n' "$V" >> "$T/usr/bin/acme-agent"
else
  printf 'echo "acme-agent %s running"\nexec sleep infinity\n' "$V" >> "$T/usr/bin/acme-agent"
fi
chmod 755 "$T/usr/bin/acme-agent"
cat > "$T/usr/lib/systemd/system/acme-agent.service" <<U
[Unit]
Description=ACME appliance agent
After=network.target

[Service]
ExecStart=/usr/bin/acme-agent
ExecStopPost=/bin/sh -c 'echo "acme-agent stopped"'
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
U
printf 'acme-agent %s data\n' "$V" > "$T/usr/share/acme/VERSION"
mkdir -p "$OUT"
SOURCE_DATE_EPOCH=1735689600 dpkg-deb --root-owner-group -Zxz --build "$T" "$OUT/acme-agent_${V}_all.deb" >/dev/null
