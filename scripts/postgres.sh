#!/usr/bin/env bash
# A throwaway PostgreSQL server for the fleet tests (Debian 12, needs root).
#   bash scripts/postgres.sh start   installs postgresql if missing, starts a private cluster on
#                                    127.0.0.1:${IBU_PG_PORT:-55432} and prints its URL on stdout
#   bash scripts/postgres.sh stop    stops it;   bash scripts/postgres.sh url   prints the URL
# The cluster lives in ${IBU_PG_DIR:-/tmp/ibu-pg} (initdb as the postgres user, trust auth,
# listening on loopback only) so it never touches the system's own cluster.
set -euo pipefail
PORT="${IBU_PG_PORT:-55432}"
DIR="${IBU_PG_DIR:-/tmp/ibu-pg}"
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"

bindir() {
  local v
  v="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)"
  [ -n "$v" ] && echo "/usr/lib/postgresql/$v/bin"
}

install() {
  if [ -z "$(bindir)" ]; then
    echo "postgres.sh: installing postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    (flock /tmp/apt.lock bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql') >&2
  fi
}

as_pg() { runuser -u postgres -- "$@"; }

start() {
  install
  local bin; bin="$(bindir)"
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    mkdir -p "$DIR"; chown postgres: "$DIR"
    as_pg "$bin/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >&2
    cat >> "$DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
fsync = off
max_connections = 200
CONF
  fi
  if ! as_pg "$bin/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >&2
  fi
  as_pg "$bin/pg_isready" -h 127.0.0.1 -p "$PORT" -t 30 >&2
  echo "$URL"
}

stop() {
  local bin; bin="$(bindir)"
  [ -n "$bin" ] && [ -f "$DIR/data/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$DIR/data" -m fast stop >&2 || true
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 install|start|stop|url" >&2; exit 2 ;;
esac
