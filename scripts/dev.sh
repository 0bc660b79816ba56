#!/usr/bin/env bash
# dev.sh -- the README's commands: install what is missing, then run the demo, the tests or lint.
# Idempotent, needs root (apt-get, loop devices, QEMU disks); a second run only checks.
#   bash scripts/dev.sh demo [--keep]   the upgrade story on the real Debian appliance (npm run demo)
#   bash scripts/dev.sh test            every test, as CI runs them (npm test)
#   bash scripts/dev.sh lint            eslint, the import graph and prettier --check (npm run lint)
# Set-up, in order: system packages and Node.js 20 (scripts/install-deps.sh); node_modules by
# `npm ci` when it is missing or package-lock.json changed since the last install (a stamp holds
# the lock file's sha256); for the tests, a private PostgreSQL (scripts/postgres.sh) unless
# IBU_TEST_PG already names one.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "dev.sh: $*" >&2; }
usage() { echo "usage: bash scripts/dev.sh demo [--keep] | test | lint" >&2; exit 2; }
job=${1:-}
case $job in demo | test | lint) shift ;; *) usage ;; esac
[ "$(id -u)" = 0 ] || { log "run as root: it installs system packages, and the demo and tests make loop devices and disks"; exit 1; }

bash scripts/install-deps.sh

STAMP=node_modules/.ibu-package-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "node_modules is missing or older than package-lock.json: npm ci"
  npm ci
  echo "$want" >"$STAMP"
fi

case $job in
  demo) exec npm run demo -- "$@" ;;
  lint) exec npm run lint ;;
  test)
    if [ -z "${IBU_TEST_PG:-}" ]; then IBU_TEST_PG=$(bash scripts/postgres.sh start); fi
    export IBU_TEST_PG
    exec npm test
    ;;
esac
