#!/usr/bin/env bash
# A throwaway single-node Ceph cluster with radosgw: the real S3 server the S3 store tests use
# (Debian 12 packages ceph-mon, ceph-osd, radosgw; recipe proven in shared/cephlab). Needs root.
#   bash scripts/radosgw.sh start   installs the packages if missing, starts (or finds running) one mon,
#                                   one memstore OSD (objects in RAM) and radosgw on 127.0.0.1, and prints
#                                   S3_ENDPOINT=, S3_ACCESS_KEY=, S3_SECRET_KEY=, S3_REGION= lines on stdout
#   bash scripts/radosgw.sh stop    stops the daemons (by pid file) and removes the cluster directory
#   bash scripts/radosgw.sh env     prints the credentials of the running cluster
# Like scripts/postgres.sh it is one shared instance: tests call start (idempotent, flock-serialised,
# 0.0 s when running, ~5 s to build) and use their own bucket names; nobody needs to stop it.
# Environment: IBU_RGW_DIR (/tmp/ibu-rgw), IBU_RGW_PORT (57480), IBU_RGW_MON_PORT (53300),
# IBU_RGW_MEMSTORE_BYTES (2 GiB: the RAM the OSD may use for object data).
set -euo pipefail
DIR="${IBU_RGW_DIR:-/tmp/ibu-rgw}"
PORT="${IBU_RGW_PORT:-57480}"
MON_PORT="${IBU_RGW_MON_PORT:-53300}"
MEMSTORE_BYTES="${IBU_RGW_MEMSTORE_BYTES:-2147483648}"
CONF="$DIR/ceph.conf"
export CEPH_CONF="$CONF"
log() { echo "[radosgw.sh $(date +%T)] $*" >&2; }
die() {
  log "ERROR: $*"
  for f in "$DIR"/log/*.log; do [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}
case "$DIR" in / | /tmp | /tmp/ | /root | /home | /usr | /var | /etc | "") echo "refusing IBU_RGW_DIR=$DIR" >&2; exit 2 ;; esac

install() {
  local b need=0
  for b in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl python3; do
    command -v "$b" >/dev/null 2>&1 || need=1
  done
  [ "$need" = 0 ] && return
  log "installing Debian packages (ceph-mon ceph-osd radosgw curl)"
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then # keep postinst from starting the system's own ceph services
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  (flock /tmp/apt.lock bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends ceph-mon ceph-osd radosgw curl python3') >&2
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ -d /run/systemd/system ]; then
    for u in ceph.target ceph-mon.target ceph-osd.target ceph-radosgw.target ceph-mgr.target ceph-crash.service; do
      systemctl disable --now "$u" >/dev/null 2>&1 || true
    done
  fi
}

pid_alive() { # pidfile: the process lives and was started with this cluster's ceph.conf
  local f="$1" p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -d "/proc/$p" ] || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$CONF"
}
# A daemon must not inherit the lock (fd 9) or the caller's pipes: a later start would wait on
# the lock forever, and a caller reading our output would never see it end.
daemon() { "$@" </dev/null >>"$DIR/log/daemon-start.log" 2>&1 9>&-; }
endpoint_up() { curl -s -o /dev/null -m 2 "http://127.0.0.1:$PORT/"; }
running() { [ -f "$DIR/s3.env" ] && pid_alive "$DIR/mon.a.pid" && pid_alive "$DIR/osd.0.pid" && pid_alive "$DIR/client.rgw.a.pid" && endpoint_up; }

stop_cluster() {
  [ -e "$DIR" ] || return 0
  if [ -n "$(ls -A "$DIR" 2>/dev/null)" ] && [ ! -f "$DIR/.ibu-rgw-cluster" ]; then
    die "$DIR was not made by radosgw.sh; refusing to touch it"
  fi
  local name p i alive
  # One daemon at a time: radosgw needs the OSD to shut down cleanly, the OSD reports to the mon.
  for name in client.rgw.a osd.0 mon.a; do
    [ -s "$DIR/$name.pid" ] || continue
    p=$(cat "$DIR/$name.pid")
    pid_alive "$DIR/$name.pid" || continue
    kill -TERM "$p" 2>/dev/null || continue
    for i in $(seq 1 50); do
      # a zombie has already let go of its ports and files
      [ -r "/proc/$p/stat" ] && [ "$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)" != Z ] || break
      sleep 0.2
    done
    pid_alive "$DIR/$name.pid" && kill -KILL "$p" 2>/dev/null
  done
  rm -rf -- "$DIR"
}

start_cluster() {
  install
  if running; then
    cat "$DIR/s3.env"
    return
  fi
  stop_cluster # stale leftovers (a daemon died, the machine rebooted)
  if endpoint_up; then die "something else already listens on 127.0.0.1:$PORT (set IBU_RGW_PORT)"; fi
  local t0 fsid osd_uuid osd_id pool i ak sk code
  t0=$(date +%s.%N)
  mkdir -p "$DIR"/{log,run,crash,mon.a,osd.0,radosgw}
  touch "$DIR/.ibu-rgw-cluster"
  fsid=$(cat /proc/sys/kernel/random/uuid)
  cat >"$CONF" <<CONF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MON_PORT]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $DIR/keyring
log file = $DIR/log/\$name.log
pid file = $DIR/\$name.pid
admin socket = $DIR/run/\$name.asok
run dir = $DIR/run
crash dir = $DIR/crash
mon cluster log file = $DIR/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $DIR/mon.\$id
# one mon, tiny cluster: commit map changes faster than the 1 s default (pool creation)
paxos propose interval = 0.1
paxos min wait = 0.01

[osd]
osd data = $DIR/osd.\$id
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
osd crush initial weight = 1
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $DIR/radosgw
rgw thread pool size = 32
# memstore keeps deleted data in RAM until garbage collection (2 h by default)
rgw gc obj min wait = 30
rgw gc processor period = 30
CONF
  log "creating keys and mon.a (fsid $fsid)"
  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" 2>>"$DIR/log/mkfs.log" || die "ceph-mon --mkfs failed"
  daemon ceph-mon -c "$CONF" -i a || die "ceph-mon failed to start"
  for i in $(seq 1 60); do
    ceph -c "$CONF" --connect-timeout 5 mon stat >/dev/null 2>&1 && break
    [ "$i" = 60 ] && die "mon did not come up"
    sleep 0.5
  done
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_id=$(ceph -c "$CONF" osd new "$osd_uuid")
  [ "$osd_id" = 0 ] || die "expected osd id 0, got '$osd_id'"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>>"$DIR/log/mkfs.log" >&2 || die "ceph-osd --mkfs failed"
  daemon ceph-osd -c "$CONF" -i 0 || die "ceph-osd failed to start"
  for i in $(seq 1 120); do
    ceph -c "$CONF" osd stat 2>/dev/null | grep -q '1 up' && break
    [ "$i" = 120 ] && die "osd.0 did not come up"
    sleep 0.5
  done
  # radosgw creates its pools lazily, one paxos round each, stalling the first requests: make them now.
  for pool in .rgw.root default.rgw.control default.rgw.meta default.rgw.log default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec; do
    ceph -c "$CONF" osd pool create "$pool" 8 8 >/dev/null 2>&1 || die "pool create $pool failed"
    ceph -c "$CONF" osd pool application enable "$pool" rgw >/dev/null 2>&1 || true
  done
  daemon radosgw -c "$CONF" -n client.rgw.a || die "radosgw failed to start"
  for i in $(seq 1 240); do
    endpoint_up && break
    [ "$i" = 240 ] && die "radosgw did not answer on 127.0.0.1:$PORT"
    sleep 0.5
  done
  ak=$(python3 -c "import secrets,string as s;print(''.join(secrets.choice(s.ascii_uppercase+s.digits) for _ in range(20)))")
  sk=$(python3 -c "import secrets,string as s;print(''.join(secrets.choice(s.ascii_letters+s.digits) for _ in range(40)))")
  radosgw-admin -c "$CONF" -n client.admin user create --uid=ibu-test --display-name="ibu tests" \
    --access-key="$ak" --secret-key="$sk" >/dev/null 2>>"$DIR/log/radosgw-admin.log" || die "user create failed"
  # The credentials must work before anyone is told them: a SigV4-signed ListBuckets
  # (curl does not send x-amz-content-sha256 by itself and radosgw wants it).
  for i in $(seq 1 40); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 3 -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
      --aws-sigv4 "aws:amz:us-east-1:s3" -u "$ak:$sk" "http://127.0.0.1:$PORT/" || true)
    [ "$code" = 200 ] && break
    [ "$i" = 40 ] && die "a signed S3 request with the new user still fails (HTTP $code)"
    sleep 0.25
  done
  printf 'S3_ENDPOINT=http://127.0.0.1:%s\nS3_ACCESS_KEY=%s\nS3_SECRET_KEY=%s\nS3_REGION=us-east-1\n' "$PORT" "$ak" "$sk" >"$DIR/s3.env.tmp"
  mv "$DIR/s3.env.tmp" "$DIR/s3.env"
  log "radosgw ready on 127.0.0.1:$PORT in $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
  cat "$DIR/s3.env"
}

LOCK="/tmp/ibu-rgw-$PORT.lock"
case "${1:-start}" in
  install) install ;;
  start) (flock 9; start_cluster) 9>"$LOCK" ;;
  stop) (flock 9; stop_cluster) 9>"$LOCK" ;;
  env) running && cat "$DIR/s3.env" || { echo "radosgw.sh: no cluster running in $DIR; run: bash scripts/radosgw.sh start" >&2; exit 1; } ;;
  *) echo "usage: $0 start|stop|env|install" >&2; exit 2 ;;
esac
