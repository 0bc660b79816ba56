# Run inside the ZFS test guest by test/zfs/zfs-transport.test.ts (through runZfsGuest), with
# ZFS loaded and udevd running. Everything is real: zpool/zfs on virtio disks and file vdevs,
# `ibu zfs publish`, `ibu serve` on 127.0.0.1, `upgradectl` with transport zfs.
# Prints one `IBU-ZFS-T <name> PASS|FAIL <detail>` line per check; the host asserts on them.
# Inputs: $REPO (this checkout), /share/{1,2}.img, /share/keys/signing.key, /share/keyring/.
# Disks (set up by runScenarioGuest): pool rpool on /dev/vdb (release), pool dpool on /dev/vdc
# (device), /dev/vdd ext4 work disk on /w (store, devices).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
IBU="$REPO/bin/ibu"
UPC="$REPO/bin/upgradectl"
S=/share
W=/w
PORT=8181
URL=http://127.0.0.1:$PORT
t() { echo "IBU-ZFS-T $1 $2 ${3:-}"; }
ok() { t "$1" PASS "${2:-}"; }
bad() { t "$1" FAIL "${2:-}"; }
check() { local n=$1; shift; if "$@" >/dev/null 2>&1; then ok "$n"; else bad "$n" "$*"; fi; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let o;try{o=JSON.parse(s)}catch{o=JSON.parse(s.trim().split("\n").pop())}const v=eval("o"+process.argv[1]);console.log(typeof v==="object"?JSON.stringify(v):v)})' "$1"; }
T0=$(now)

echo "== pools and disks"
# runScenarioGuest (test/zfs/harness.ts) created the pools and mounted the work disk on $W.
check pools zpool list rpool dpool
check workdisk mountpoint -q $W

echo "== release side: ibu zfs publish 1 and 2 (block by block into rpool/os)"
st=$(now)
$IBU zfs publish --image $S/1.img --version 1 --store $W/store --key $S/keys/signing.key --dataset rpool/os --json > $W/pub1.json 2> $W/pub1.err
rc=$?
[ $rc = 0 ] && ok publish-1 "$(secs "$st") s" || bad publish-1 "exit $rc: $(tail -c 600 $W/pub1.err)"
st=$(now)
$IBU zfs publish --image $S/2.img --version 2 --store $W/store --key $S/keys/signing.key --dataset rpool/os --json > $W/pub2.json 2> $W/pub2.err
rc=$?
[ $rc = 0 ] && ok publish-2 "$(secs "$st") s" || bad publish-2 "exit $rc: $(tail -c 600 $W/pub2.err)"
# the write stats object is {blocks, unchanged, written, zeroed} (src/zfs/zvol.ts)
read -r blocks unchanged written zeroed < <(json '.zfs.write' < $W/pub2.json | tr -d '{}"a-z:' | tr ',' ' ')
snapw=$(zfs get -Hp -o value written rpool/os@2)
# Exactly the 8 KiB blocks that differ between the images were written (counted on the host:
# $S/expected-diff = "<differing blocks> <of which zero in 2>"), and the snapshot holds about that.
read -r ediff ezero < $S/expected-diff
if [ -n "$blocks" ] && [ "$written" = $((ediff - ezero)) ] && [ "$zeroed" = "$ezero" ] && [ "$snapw" -lt $(( (ediff + 256) * 8192 )) ]; then
  ok publish-block-diff "blocks=$blocks written=$written zeroed=$zeroed unchanged=$unchanged snapshot-written=$snapw"
else
  bad publish-block-diff "blocks=$blocks written=$written zeroed=$zeroed unchanged=$unchanged snapshot-written=$snapw expected $ediff differing, $ezero zero"
fi
g1=$(zfs get -Hp -o value guid rpool/os@1); g2=$(zfs get -Hp -o value guid rpool/os@2)
read -r mfrom mfg mg msha msize < <(node -e 'const z=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).zfs||{};const s=(z.streams||[])[0]||{};console.log(s.from,s.fromGuid,z.guid,s.sha256,s.size)' $W/store/releases/2/manifest.json)
[ "$mfrom" = 1 ] && [ "$mfg" = "$g1" ] && [ "$mg" = "$g2" ] && ok manifest-zfs "stream 1->2 $msize bytes, guids $g1 -> $g2" || bad manifest-zfs "from=$mfrom fromGuid=$mfg/$g1 guid=$mg/$g2"
h1=$(zfs send -i @1 rpool/os@2 | sha256sum | cut -d' ' -f1)
sleep 1
h2=$(zfs send -i @1 rpool/os@2 | sha256sum | cut -d' ' -f1)
[ "$h1" = "$h2" ] && [ "$h1" = "$msha" ] && ok send-deterministic "$h1" || bad send-deterministic "$h1 $h2 signed $msha"

echo "== ibu serve on 127.0.0.1:$PORT"
$IBU serve --data $W/store --listen 127.0.0.1:$PORT --no-fleet --precompute 0 --log-level warn > $W/serve.log 2>&1 &
SERVE=$!
for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
check serve-up node -e 'fetch(process.argv[1]).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))' $URL/v1/channels/stable/releases

# A device: host dir with images/, grubenv, journal; running 1; its config selects transport zfs.
mkdev() { # NAME DATASET FALLBACK(true|false)
  local d=$W/$1
  mkdir -p $d/host/images $d/host/boot/grub $d/system/etc
  cp --sparse=always $S/1.img $d/host/images/1.img
  echo "device-$1" > $d/system/etc/hostname
  echo "console=ttyS0 loop=/images/1.img" > $d/cmdline
  cat > $d/agent.json <<EOF
{ "server": { "url": "$URL", "deviceId": "$1", "token": "t" },
  "keyring": "$S/keyring", "hostMount": "$d/host", "cmdlineFile": "$d/cmdline", "systemRoot": "$d/system",
  "boot": { "envDir": "$d/host/boot/grub" }, "checkpoint": "sync",
  "reboot": { "command": ["/bin/true"], "forceCommand": ["/bin/true"], "forceAfterSeconds": 0, "sysrqAfterSeconds": 0 },
  "space": { "reserveBytes": 0 }, "download": { "deltaWaitSeconds": 600, "maxRetryAfterSeconds": 2 },
  "migration": [ { "path": "/etc/hostname", "strategy": "copy" } ],
  "health": { "deadlineSeconds": 30, "checks": [ { "name": "true", "command": ["/bin/true"], "timeoutSeconds": 10 } ] },
  "pollSeconds": 0.2,
  "transport": "zfs", "zfs": { "dataset": "$2", "fallbackToChunks": $3 } }
EOF
  $UPC --config $d/agent.json init --default 1 > /dev/null 2>> $d/agent.log
}
envsum() { cat $W/$1/host/boot/grub/grubenv $W/$1/host/boot/grub/grubenv.bak 2>/dev/null | sha256sum | cut -d' ' -f1; }
imgstat() { stat -c '%i %s %Y %Z' $W/$1/host/images/1.img; }
getenv() { grub-editenv $W/$1/host/boot/grub/grubenv list | sed -n "s/^$2=//p"; }
# Provisioning (the factory's job): the device pool receives the release line's first snapshot.
provision() { zfs send rpool/os@1 | zfs recv "$1"; }

echo "== happy path: device d1 upgrades 1 -> 2 through the zfs stream"
provision dpool/os
check provisioned test "$(zfs get -Hp -o value guid dpool/os@1)" = "$g1"
mkdev d1 dpool/os false
st=$(now)
$UPC --config $W/d1/agent.json --json prepare --version 2 > $W/d1/prepare.json 2>> $W/d1/agent.log
rc=$?
[ $rc = 0 ] && ok happy-prepare "$(secs "$st") s" || bad happy-prepare "exit $rc: $(tail -c 800 $W/d1/agent.log) $(cat $W/d1/prepare.json)"
grep -q 'zfs delta 1→2 is \(queued\|building\)' $W/d1/agent.log && ok happy-202 "$(grep -c 'zfs delta 1→2 is' $W/d1/agent.log) waits" || bad happy-202 "no 202 wait in the agent log"
grep -q 'zfs transport: received dpool/os@2' $W/d1/agent.log && ok happy-received "$(grep 'zfs transport: received' $W/d1/agent.log | head -1)" || bad happy-received "$(tail -c 600 $W/d1/agent.log)"
m=$(grep -o '"method":"[a-z]*"' $W/d1/prepare.json | head -1 | cut -d'"' -f4)
[ "$m" = zfs ] && ok happy-method "$(grep -o '"downloadedBytes":[0-9]*' $W/d1/prepare.json)" || bad happy-method "method=$m"
check happy-snapshot test "$(zfs get -Hp -o value guid dpool/os@2)" = "$g2"
want=$(sha256sum $S/2.img | cut -d' ' -f1)
got=$(sha256sum $W/d1/host/images/2.img | cut -d' ' -f1)
alloc=$(($(stat -c %b $W/d1/host/images/2.img) * 512)); size=$(stat -c %s $W/d1/host/images/2.img)
[ "$want" = "$got" ] && [ "$alloc" -lt "$size" ] && ok happy-image "sha256 ok, sparse: $alloc of $size bytes allocated" || bad happy-image "sha $got want $want alloc $alloc size $size"
check happy-staging-clean test -z "$(ls -A $W/d1/host/images/.ibu/staging 2>/dev/null)"
$UPC --config $W/d1/agent.json --json apply --now > $W/d1/apply.json 2>> $W/d1/agent.log
rc=$?
[ $rc = 0 ] && [ "$(getenv d1 try_image)" = 2 ] && [ "$(getenv d1 default_image)" = 1 ] && ok happy-try "try_image=2 default_image=1" || bad happy-try "exit $rc try=$(getenv d1 try_image) $(tail -c 400 $W/d1/agent.log)"
# "Boot" 2 as GRUB would (try once), then confirm: health check, commit.
grub-editenv $W/d1/host/boot/grub/grubenv unset try_image; grub-editenv $W/d1/host/boot/grub/grubenv.bak unset try_image 2>/dev/null
echo "console=ttyS0 loop=/images/2.img" > $W/d1/cmdline
$UPC --config $W/d1/agent.json --json confirm > $W/d1/confirm.json 2>> $W/d1/agent.log
rc=$?
[ $rc = 0 ] && [ "$(getenv d1 default_image)" = 2 ] && ok happy-confirm "default_image=2" || bad happy-confirm "exit $rc $(cat $W/d1/confirm.json) $(tail -c 400 $W/d1/agent.log)"
check cache-file test -f "$W/store/cache/deltas/zfs+1_2.ibudelta"

# ---- failure cases: device d2 (running 1, zfs.fallbackToChunks false), the server's cached
# stream replaced by a bad one for each case. After each: the expected code, nothing received,
# no partial receive state, no image 2, grubenv and the running image untouched.
echo "== failure cases"
provision dpool/os2
mkdev d2 dpool/os2 false
CACHED=$W/store/cache/deltas/zfs+1_2.ibudelta
cp $CACHED $W/good.zst
zstd -q -dc $W/good.zst > $W/good.raw
E0=$(envsum d2); I0=$(imgstat d2)
untouched() { # CASE DATASET DEVICE
  local why=""
  [ "$(envsum "$3")" = "$E0" ] || why="$why grubenv-changed"
  [ "$(imgstat "$3")" = "$I0" ] || why="$why running-image-changed"
  [ -e "$W/$3/host/images/2.img" ] && why="$why image-2-installed"
  zfs list "$2@2" >/dev/null 2>&1 && why="$why snapshot-2-exists"
  zfs list -H -t all -o name -r "$2" | grep -q '%' && why="$why recv-clone-left"
  tok=$(zfs get -H -o value receive_resume_token "$2"); [ "$tok" = "-" ] || why="$why resume-token"
  ls $W/$3/host/images/.ibu/staging/ 2>/dev/null | grep -q 'zfs+' && why="$why stream-left-in-staging"
  [ -z "$why" ] && ok "$1-untouched" || bad "$1-untouched" "$why"
}
failcase() { # CASE FILE EXPECTED_CODE [DEVICE DATASET]
  local dev=${4:-d2} ds=${5:-dpool/os2}
  [ -n "$2" ] && cp "$2" $CACHED
  $UPC --config $W/$dev/agent.json --json prepare --version 2 > $W/$dev/$1.json 2>> $W/$dev/agent.log
  local rc=$? code
  code=$(grep -o '"code":"[A-Z_]*"' $W/$dev/$1.json | head -1 | cut -d'"' -f4)
  [ $rc != 0 ] && [ "$code" = "$3" ] && ok "$1" "exit $rc $code" || bad "$1" "exit $rc code=$code $(tail -c 500 $W/$dev/agent.log)"
  untouched "$1" "$ds" "$dev"
  cp $W/good.zst $CACHED
}
# wrong base: a valid stream of another zvol's lineage
zfs create -s -V 64M rpool/alt && zfs snapshot rpool/alt@a && dd if=$S/2.img of=/dev/zvol/rpool/alt bs=1M count=4 conv=fsync 2>/dev/null && zfs snapshot rpool/alt@b
zfs send -i @a rpool/alt@b | zstd -q -c > $W/wrongbase.zst
failcase wrong-base $W/wrongbase.zst ZFS_WRONG_BASE
head -c $(( $(stat -c %s $W/good.raw) / 2 )) $W/good.raw | zstd -q -c > $W/truncated.zst
failcase truncated $W/truncated.zst ZFS_STREAM_TRUNCATED
cp $W/good.raw $W/tampered.raw
off=$(( $(stat -c %s $W/good.raw) / 2 ))
printf '\x5a\xa5\x5a\xa5' | dd of=$W/tampered.raw bs=1 seek=$off conv=notrunc 2>/dev/null
zstd -q -c $W/tampered.raw > $W/tampered.zst
failcase tampered $W/tampered.zst ZFS_STREAM_INVALID
check running-image-hash test "$(sha256sum < $W/d2/host/images/1.img | cut -d' ' -f1)" = "$(sha256sum < $S/1.img | cut -d' ' -f1)"

# full pool: a small pool on a file vdev whose free space a reservation eats
truncate -s 256M $W/small.vdev && zpool create -f -m none small $W/small.vdev
provision small/os
zfs set refreservation=none small/os
mkdev d3 small/os false
E0=$(envsum d3); I0=$(imgstat d3)
avail=$(zfs get -Hp -o value available small)
zfs create -o mountpoint=none -o refreservation=$((avail - 1048576)) small/hog
failcase pool-full "" ZFS_POOL_FULL d3 small/os
zfs list -t all -r small >> $W/d3/agent.log 2>&1

# corrupted pool: random bytes over the vdev's data area, then a scrub finds the errors
truncate -s 256M $W/bad.vdev && zpool create -f -m none -o failmode=continue bad $W/bad.vdev
provision bad/os
mkdev d4 bad/os false
E0=$(envsum d4); I0=$(imgstat d4)
sync; dd if=/dev/urandom of=$W/bad.vdev bs=1M seek=4 count=96 conv=notrunc,fsync 2>/dev/null
timeout 300 zpool scrub -w bad 2>/dev/null || sleep 5
zpool status -v bad > $W/bad-status.txt 2>&1
grep -q 'errors: No known data errors' $W/bad-status.txt && bad scrub-found-errors "$(cat $W/bad-status.txt)" || ok scrub-found-errors "$(grep 'errors:' $W/bad-status.txt)"
failcase pool-corrupt "" ZFS_POOL_CORRUPT d4 bad/os

# ---- fallback: a device pool without the base snapshot fetches chunks by itself
echo "== fallback to chunks"
zfs create -s -V 64M dpool/empty
mkdev d5 dpool/empty true
$UPC --config $W/d5/agent.json --json prepare --version 2 > $W/d5/prepare.json 2>> $W/d5/agent.log
rc=$?
m=$(grep -o '"method":"[a-z]*"' $W/d5/prepare.json | head -1 | cut -d'"' -f4)
[ $rc = 0 ] && [ "$m" = chunks ] && grep -q 'lacks the base snapshot' $W/d5/agent.log && ok fallback-chunks "$(grep -m1 'lacks the base' $W/d5/agent.log)" || bad fallback-chunks "exit $rc method=$m $(tail -c 600 $W/d5/agent.log)"
check fallback-image test "$(sha256sum < $W/d5/host/images/2.img | cut -d' ' -f1)" = "$want"

kill $SERVE 2>/dev/null; wait $SERVE 2>/dev/null
for d in d1 d2 d3 d4 d5; do echo "--- $d agent log"; tail -n 30 $W/$d/agent.log 2>/dev/null; done
echo "--- serve log"; tail -n 30 $W/serve.log
echo "IBU-ZFS-T total PASS $(secs "$T0") s in the guest"
