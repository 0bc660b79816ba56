#!/usr/bin/env bash
# nginx as a caching proxy (a CDN node) in front of `ibu serve` replicas, from assets/nginx/ibu-cdn.conf.
#   bash scripts/nginx-cdn.sh start DIR LISTEN UPSTREAM...   e.g. start /tmp/cdn 127.0.0.1:8088 127.0.0.1:8080 127.0.0.1:8081
#   bash scripts/nginx-cdn.sh stop DIR                      stops that nginx (by its pid file) and removes DIR
#   bash scripts/nginx-cdn.sh config DIR LISTEN UPSTREAM... only writes DIR/nginx.conf (and checks it with nginx -t)
# Environment: IBU_CDN_CACHE_MAX (cache size on disk, default 10g), IBU_CDN_USER (worker user, default www-data).
# Several can run side by side (each DIR is one nginx); installs nginx when missing (needs root).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
DIR="${2:-}"
case "$DIR" in / | /tmp | /tmp/ | /root | /home | /usr | /var | /etc | "") echo "usage: $0 start|config DIR LISTEN UPSTREAM... | stop DIR (DIR: a private directory)" >&2; exit 2 ;; esac
USER_="${IBU_CDN_USER:-www-data}"

install() {
  command -v nginx >/dev/null 2>&1 && return
  echo "nginx-cdn.sh: installing nginx" >&2
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then # the package must not start the system's nginx on port 80
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  (flock /tmp/apt.lock bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx') >&2
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

config() {
  local listen="$1"
  shift
  [ $# -ge 1 ] || { echo "nginx-cdn.sh: give at least one upstream HOST:PORT" >&2; exit 2; }
  mkdir -p "$DIR"/{cache,tmp}
  touch "$DIR/.ibu-cdn"
  chown -R "$USER_" "$DIR/cache" "$DIR/tmp"
  local ups="" u
  for u in "$@"; do ups+="    server $u max_fails=1 fail_timeout=5s;"$'\n'; done
  UPS="$ups" DIR="$DIR" LISTEN="$listen" CACHE_MAX="${IBU_CDN_CACHE_MAX:-10g}" USER_="$USER_" python3 - "$here/assets/nginx/ibu-cdn.conf" "$DIR/nginx.conf" <<'PY'
import os, sys
s = open(sys.argv[1]).read()
for k, v in {'@UPSTREAMS@': os.environ['UPS'].rstrip('\n'), '@DIR@': os.environ['DIR'], '@LISTEN@': os.environ['LISTEN'],
             '@CACHE_MAX@': os.environ['CACHE_MAX'], '@USER@': os.environ['USER_']}.items():
    s = s.replace(k, v)
open(sys.argv[2], 'w').write(s)
PY
  nginx -t -q -p "$DIR" -c "$DIR/nginx.conf" >&2
}

ours() { [ -s "$DIR/nginx.pid" ] && [ -d "/proc/$(cat "$DIR/nginx.pid")" ] && tr '\0' ' ' <"/proc/$(cat "$DIR/nginx.pid")/cmdline" | grep -qF -- "$DIR/nginx.conf"; }

case "$cmd" in
  config) install; config "${@:3}" ;;
  start)
    install
    config "${@:3}"
    if ours; then nginx -p "$DIR" -c "$DIR/nginx.conf" -s reload; else nginx -p "$DIR" -c "$DIR/nginx.conf" </dev/null >/dev/null 2>>"$DIR/start.log"; fi
    for _ in $(seq 1 50); do ours && break; sleep 0.1; done
    ours || { cat "$DIR/start.log" "$DIR/error.log" >&2 2>/dev/null; echo "nginx-cdn.sh: nginx did not start" >&2; exit 1; }
    echo "http://$3"
    ;;
  stop)
    [ -e "$DIR" ] || exit 0
    [ -f "$DIR/.ibu-cdn" ] || { echo "nginx-cdn.sh: $DIR was not made by this script; refusing to touch it" >&2; exit 1; }
    if ours; then
      p=$(cat "$DIR/nginx.pid")
      kill -QUIT "$p" 2>/dev/null || true
      for _ in $(seq 1 50); do [ -d "/proc/$p" ] || break; sleep 0.1; done
      [ -d "/proc/$p" ] && kill -KILL "$p" 2>/dev/null
    fi
    rm -rf -- "$DIR"
    ;;
  *) echo "usage: $0 start|config DIR LISTEN UPSTREAM... | stop DIR" >&2; exit 2 ;;
esac
