# ibu-boot.sh -- boot a root filesystem that is an image FILE on a host partition (loop=).
#
# POSIX sh, sourced (never executed) by both initramfs flavours, so they share one behaviour:
#   * assets/initramfs/init                 (the small busybox initramfs the e2e tests use)
#   * assets/initramfs-tools/scripts/ibu    (Debian/Ubuntu initramfs-tools, boot=ibu)
# The caller provides two functions before calling into this file:
#   ibu_log MSG...      print a progress line on the console
#   ibu_fatal MSG...    report a fatal error and reboot (after panic= seconds); never returns
#
# Kernel command line read here (see docs/boot.md):
#   root=UUID=..|LABEL=..|PARTUUID=..|/dev/..   the HOST partition holding /images (required)
#   rootfstype=ext4      host fs type            rootdelay=N  seconds to wait for the host device
#   loop=/images/V.img   the image file, relative to the host fs root (required)
#   loopfstype=ext4      image fs type           loopflags=OPTS  extra mount options for the image
#   ro | rw              mount the image read-only (default) or read-write
#   fsck.mode=auto|skip|force    fsck.repair=preen|yes|no
#   ibu.trial=0|1        set by GRUB: 1 on a one-shot trial boot (changes the fsck policy below)
#   ibu.tryclear=1       set by GRUB on a trial boot when the env says ibu_try_clear=initramfs
#                        (GRUB cannot write its env there: RAID, LVM...): clear try_image here,
#                        right after mounting the host, before anything of the image runs
#   ibu.attempt=V ibu.tally=x.. ibu.bad=,A,B   set by GRUB on every boot in that same mode: the
#                        boot counters GRUB could not write (assets/grub/10_ibu); written here
#   panic=N              seconds before the reboot that follows a fatal error
#   ibu.verity=required  refuse to boot an image without a verity record (see below)
#
# dm-verity (docs/boot.md "Verity"): when <images dir>/.ibu/verity/<V> exists (the agent writes
# "<root hash> <hash offset>" there at apply, from the signed manifest), the image file is opened
# read-only through dm-verity (veritysetup, tree appended to the file) and the verified device is
# mounted as root, read-only: a block that does not match reads as an I/O error, a tree that does
# not match the root hash does not open (fatal -> reboot -> GRUB falls back). No fsck of such an
# image: it is never written, and verity checks every block it reads.
#
# Read-only images (usr/lib/ibu/readonly in the image, from `readonly: true` in the product spec):
# /etc is an overlay over the image's /etc with the upper dir on the host, per version
# (<images dir>/.ibu/etc/<V>/upper: the agent writes it at apply, merged three ways), and /var an
# overlay whose upper dir (<images dir>/.ibu/var/upper) is kept across versions.
#
# Tools: shell builtins and what both flavours carry (mount, losetup, dd, cat, e2fsck, findfs,
# veritysetup, modprobe). Initramfs-tools without busybox (the Debian appliance) has only klibc's
# tools: no tr, sed, grep, head, wc, awk, basename or dirname, so text is handled by the shell
# (test/e2e/boot-scripts.test.ts runs this file under klibc's sh with klibc's tools only).
#
# fsck policy (e2fsck exit codes: 0 clean, 1/2 repaired, 4 uncorrected, 8 operational error):
#   host fs      : -p; on 4 once more with -y (an appliance has no operator; the host only
#                  holds image files and the agent's journal); still >= 4 -> fatal.
#   trial image  : -p; >= 4 -> fatal, so the reboot lands on the committed image (GRUB has
#                  already cleared try_image).
#   committed    : -p; on 4 once more with -y (nothing better to fall back to); >= 4 -> fatal.

IBU_ROOT= IBU_ROOTFSTYPE=ext4 IBU_ROOTDELAY=10 IBU_LOOP= IBU_LOOPFSTYPE=ext4 IBU_LOOPFLAGS=
IBU_RO=ro IBU_FSCK=auto IBU_FSCKREPAIR=preen IBU_TRIAL=0 IBU_TRYCLEAR=0 IBU_PANIC=5
IBU_ATTEMPT= IBU_TALLY= IBU_BAD= IBU_VERITY_REQUIRED=0
IBU_LOOPDEV= IBU_HOSTDEV= IBU_VERITY=

# ibu_words STRING SEP: the non-empty fields of STRING split at the character SEP, one space between
ibu_words() {
	_w= _rest=$1
	while [ -n "$_rest" ]; do
		case "$_rest" in
		*"$2"*) _f=${_rest%%"$2"*}; _rest=${_rest#*"$2"} ;;
		*) _f=$_rest; _rest= ;;
		esac
		[ -n "$_f" ] && _w="${_w:+$_w }$_f"
	done
	echo "$_w"
}

ibu_parse_cmdline() {
	for x in $(cat /proc/cmdline); do
		case "$x" in
		root=*)        IBU_ROOT=${x#root=} ;;
		rootfstype=*)  IBU_ROOTFSTYPE=${x#rootfstype=} ;;
		rootdelay=*)   IBU_ROOTDELAY=${x#rootdelay=} ;;
		loop=*)        IBU_LOOP=${x#loop=} ;;
		loopfstype=*)  IBU_LOOPFSTYPE=${x#loopfstype=} ;;
		loopflags=*)   IBU_LOOPFLAGS=${x#loopflags=} ;;
		ro)            IBU_RO=ro ;;
		rw)            IBU_RO=rw ;;
		fsck.mode=skip|fastboot) IBU_FSCK=skip ;;
		fsck.mode=force|forcefsck) IBU_FSCK=force ;;
		fsck.repair=no)  IBU_FSCKREPAIR=no ;;
		fsck.repair=yes|fsckfix) IBU_FSCKREPAIR=yes ;;
		ibu.trial=1)   IBU_TRIAL=1 ;;
		ibu.tryclear=1) IBU_TRYCLEAR=1 ;;
		ibu.attempt=*) IBU_ATTEMPT=${x#ibu.attempt=} ;;
		ibu.tally=*)   IBU_TALLY=${x#ibu.tally=} ;;
		ibu.bad=*)     IBU_BAD=$(ibu_words "${x#ibu.bad=}" ,) ;;
		panic=*)       IBU_PANIC=${x#panic=} ;;
		ibu.verity=required) IBU_VERITY_REQUIRED=1 ;;
		esac
	done
	case "$IBU_ROOTDELAY" in ''|*[!0-9]*) IBU_ROOTDELAY=10 ;; esac
}

# ibu_check_fs WHAT FSTYPE DEVICE-OR-FILE RETRY(yes|no)
# Runs e2fsck per the policy above; calls ibu_fatal on an unrecoverable result.
ibu_check_fs() {
	case "$2" in ext2|ext3|ext4) ;; *) ibu_log "no fsck for fstype $2 ($1)"; return 0 ;; esac
	[ "$IBU_FSCK" = skip ] && { ibu_log "fsck $1 skipped (fsck.mode=skip)"; return 0; }
	_force=; [ "$IBU_FSCK" = force ] && _force=-f
	case "$IBU_FSCKREPAIR" in no) _mode=-n ;; yes) _mode=-y ;; *) _mode=-p ;; esac
	ibu_log "fsck $1: e2fsck $_mode $_force $3"
	e2fsck $_mode $_force "$3"
	_rc=$?
	if [ $_rc -ge 4 ] && [ $_rc -lt 8 ] && [ "$4" = yes ] && [ "$_mode" = -p ]; then
		ibu_log "fsck $1: e2fsck -p left errors (rc=$_rc); repairing with e2fsck -y"
		e2fsck -y $_force "$3"
		_rc=$?
	fi
	case $_rc in
	0)   return 0 ;;
	1|2) ibu_log "fsck $1: errors were corrected (rc=$_rc)"; return 0 ;;
	4)   ibu_fatal "fsck $1 ($3): the filesystem has UNCORRECTED errors (e2fsck rc=4)" ;;
	8)   ibu_fatal "fsck $1 ($3): e2fsck operational error (rc=8): not an ext2/3/4 filesystem, truncated or unreadable" ;;
	*)   ibu_fatal "fsck $1 ($3): e2fsck failed with rc=$_rc" ;;
	esac
}

# ibu_find_host: resolve $IBU_ROOT to a block device, waiting up to rootdelay seconds
# (devtmpfs creates the nodes; no udev needed). Sets IBU_HOSTDEV.
ibu_find_host() {
	_i=0
	while :; do
		IBU_HOSTDEV=
		case "$IBU_ROOT" in
		UUID=*|LABEL=*|PARTUUID=*|PARTLABEL=*) IBU_HOSTDEV=$(findfs "$IBU_ROOT" 2>/dev/null) ;;
		/dev/*) [ -b "$IBU_ROOT" ] && IBU_HOSTDEV=$IBU_ROOT ;;
		*) ibu_fatal "unsupported root=$IBU_ROOT: name the host partition as UUID=, LABEL=, PARTUUID= or /dev/..." ;;
		esac
		[ -n "$IBU_HOSTDEV" ] && return 0
		_i=$((_i + 1))
		if [ $_i -gt $((IBU_ROOTDELAY * 10)) ]; then
			_parts=
			while read -r _ _ _ _n; do
				case "$_n" in ''|name) ;; *) _parts="$_parts$_n " ;; esac
			done < /proc/partitions
			ibu_fatal "host partition $IBU_ROOT not found after ${IBU_ROOTDELAY}s (block devices: ${_parts:-none})"
		fi
		usleep 100000 2>/dev/null || sleep 1
	done
}

# ibu_mount_host DEVICE MOUNTPOINT: fsck the host fs, mount it read-write (it holds grubenv,
# the images and the agent's journal).
ibu_mount_host() {
	IBU_HOSTDEV=$1
	ibu_check_fs host "$IBU_ROOTFSTYPE" "$1" yes
	mkdir -p "$2"
	mount -t "$IBU_ROOTFSTYPE" -o rw "$1" "$2" ||
		ibu_fatal "cannot mount the host partition $1 ($IBU_ROOTFSTYPE) on $2"
}

# ibu_mount_image HOSTMNT ROOTMNT: fsck the image file and mount it on ROOTMNT through a loop
# device. With `ro` the loop device is read-only too: a writable loop device keeps the image
# file open for writing, and the host fs could then never be remounted read-only at shutdown,
# leaving its journal un-checkpointed (GRUB does not replay journals). Boot `rw` for a writable
# root; the host is then checkpointed only by the agent (fsfreeze) and by the next initramfs.
ibu_mount_image() {
	[ -n "$IBU_LOOP" ] || ibu_fatal "no loop= on the kernel command line: name the image file, e.g. loop=/images/1.img"
	_img="$1/${IBU_LOOP#/}"
	if [ ! -f "$_img" ]; then
		_have=
		for _f in "$1"/images/*; do [ -e "$_f" ] && _have="$_have${_f##*/} "; done
		ibu_fatal "image file $IBU_LOOP not found on the host partition $IBU_HOSTDEV (have: $_have)"
	fi
	# parameter expansion, not basename/dirname: initramfs-tools without busybox (the Debian
	# appliance) has only klibc's tools, and neither of those
	_v=${IBU_LOOP##*/} && _v=${_v%.img}
	_rec="${_img%/*}/.ibu/verity/$_v"
	_hash= _off=
	if [ -f "$_rec" ]; then
		read -r _hash _off < "$_rec"
		# strict forms: the record is data from the host fs, never shell
		case "$_hash" in *[!0-9a-f]*|'') ibu_fatal "verity record $_rec is malformed (root hash '$_hash')" ;; esac
		case "$_off" in *[!0-9]*|'') ibu_fatal "verity record $_rec is malformed (hash offset '$_off')" ;; esac
		[ ${#_hash} -eq 64 ] || ibu_fatal "verity record $_rec is malformed (root hash of ${#_hash} characters)"
		IBU_VERITY=1
	elif [ "$IBU_VERITY_REQUIRED" = 1 ]; then
		ibu_fatal "no verity record for $IBU_LOOP ($_rec) and ibu.verity=required: refusing an unverified root"
	fi
	if [ -n "$IBU_VERITY" ]; then
		ibu_log "fsck image $IBU_LOOP skipped: dm-verity checks every block it reads"
	else
		_retry=yes; [ "$IBU_TRIAL" = 1 ] && _retry=no
		ibu_check_fs "image $IBU_LOOP" "$IBU_LOOPFSTYPE" "$_img" $_retry
	fi
	IBU_LOOPDEV=$(losetup -f 2>/dev/null)
	[ -n "$IBU_LOOPDEV" ] || ibu_fatal "no free loop device (is the loop module loaded?)"
	_lo_ro=; { [ "$IBU_RO" = ro ] || [ -n "$IBU_VERITY" ]; } && _lo_ro=-r
	losetup $_lo_ro "$IBU_LOOPDEV" "$_img" || ibu_fatal "losetup $_lo_ro $IBU_LOOPDEV $_img failed"
	_dev=$IBU_LOOPDEV
	_opts=$IBU_RO
	if [ -n "$IBU_VERITY" ]; then
		modprobe -q dm_verity 2>/dev/null
		command -v veritysetup >/dev/null 2>&1 ||
			ibu_fatal "$IBU_LOOP has a verity record but this initramfs has no veritysetup (install cryptsetup-bin and rebuild it; busybox flavour: --verity)"
		# no udev in the busybox flavour: libdevmapper then makes /dev/mapper nodes itself
		command -v udevadm >/dev/null 2>&1 || export DM_DISABLE_UDEV=1
		# open checks the superblock, not the root hash: the first read does (the tree's top block
		# is hashed against it), so read one block now and name the failure for what it is
		if ! veritysetup open "$IBU_LOOPDEV" ibu-root "$IBU_LOOPDEV" "$_hash" --hash-offset="$_off" ||
			! dd if=/dev/mapper/ibu-root of=/dev/null bs=4096 count=1 2>/dev/null; then
			ibu_fatal "dm-verity: $IBU_LOOP does not match the root hash the agent recorded ($_hash): the image is damaged or tampered with"
		fi
		_dev=/dev/mapper/ibu-root
		_opts=ro
		ibu_log "dm-verity: $IBU_LOOP verified by root hash $_hash (tree at byte $_off)"
	fi
	[ -n "$IBU_LOOPFLAGS" ] && _opts="$_opts,$IBU_LOOPFLAGS"
	mount -t "$IBU_LOOPFSTYPE" -o "$_opts" "$_dev" "$2" ||
		ibu_fatal "cannot mount image $IBU_LOOP ($IBU_LOOPFSTYPE, $_opts) from $_dev"
	ibu_log "mounted $IBU_LOOP on $2 via $_dev ($_opts, trial=$IBU_TRIAL)"
	if [ -n "$IBU_VERITY" ]; then
		# GRUB loaded kernel and initrd from the file without verity: read them back through it,
		# so a rotten region is caught now and the device falls back instead of running on it
		for _f in vmlinuz initrd.img; do
			[ -e "$2/$_f" ] || continue
			cat "$2/$_f" > /dev/null || ibu_fatal "dm-verity: /$_f of $IBU_LOOP fails verification (I/O error): the image is damaged"
		done
	fi
	ibu_mount_state "$1" "$2"
}

# ibu_mount_state HOSTMNT ROOTMNT: a read-only image (usr/lib/ibu/readonly) gets its /etc and
# /var as overlays whose upper dirs are on the host fs (see the top of this file).
ibu_mount_state() {
	[ -e "$2/usr/lib/ibu/readonly" ] || return 0
	_v=${IBU_LOOP##*/} && _v=${_v%.img}
	_s="$1/${IBU_LOOP#/}" && _s="${_s%/*}/.ibu"
	modprobe -q overlay 2>/dev/null
	mkdir -p "$_s/etc/$_v/upper" "$_s/etc/$_v/work" || ibu_fatal "cannot create the /etc overlay dirs in $_s/etc/$_v"
	mount -t overlay -o "lowerdir=$2/etc,upperdir=$_s/etc/$_v/upper,workdir=$_s/etc/$_v/work" overlay "$2/etc" ||
		ibu_fatal "cannot mount the /etc overlay of $IBU_LOOP (upper $_s/etc/$_v/upper)"
	if [ -d "$2/var" ]; then
		mkdir -p "$_s/var/upper" "$_s/var/work" || ibu_fatal "cannot create the /var overlay dirs in $_s/var"
		mount -t overlay -o "lowerdir=$2/var,upperdir=$_s/var/upper,workdir=$_s/var/work" overlay "$2/var" ||
			ibu_fatal "cannot mount the /var overlay of $IBU_LOOP (upper $_s/var/upper)"
	fi
	ibu_log "read-only image $IBU_LOOP: /etc and /var are overlays on the host ($_s/etc/$_v, $_s/var)"
}

# ibu_handover_host HOSTMNT ROOTMNT: the running image sees the host fs at /host when the image
# has that directory; otherwise the host stays mounted but invisible after switch_root.
ibu_handover_host() {
	if [ -d "$2/host" ]; then
		mount -o move "$1" "$2/host" || ibu_fatal "cannot move the host mount $1 to $2/host"
	else
		ibu_log "image $IBU_LOOP has no /host directory; the host fs is not visible to it"
	fi
}

# ibu_release: undo the mounts before a reboot, so the host fs is clean for GRUB and fsck.
ibu_release() {
	sync
	if [ -n "$2" ]; then
		umount "$2/var" 2>/dev/null
		umount "$2/etc" 2>/dev/null
		umount "$2" 2>/dev/null
	fi
	[ -n "$IBU_VERITY" ] && veritysetup close ibu-root 2>/dev/null
	[ -n "$IBU_LOOPDEV" ] && losetup -d "$IBU_LOOPDEV" 2>/dev/null
	[ -n "$1" ] && umount "$1" 2>/dev/null
	sync
}

# ---------------------------------------------------------------- boot environment (grubenv)
# The agent keeps two copies, DIR/grubenv and DIR/grubenv.bak (docs/agent.md): 1024-byte GRUB
# env blocks with ibu_seq=N first and ibu_check=N last; a copy is valid when both are equal.
# A plain block with neither (e.g. made by grub-editenv) is accepted too, as seq 0, as GRUB does.

# ibu_env_size FILE: its size in bytes for a text file (klibc has no wc; the x keeps trailing
# newlines in the count; a NUL byte, which the shell drops, makes the size wrong: not an env block)
ibu_env_size() {
	[ -f "$1" ] || return 1
	_t=$(cat "$1" && echo x) || return 1
	echo $((${#_t} - 1))
}

# ibu_env_valid FILE: prints the copy's sequence number when it is a valid env block
ibu_env_valid() {
	[ "$(ibu_env_size "$1")" = 1024 ] || return 1
	_l= _s= _c= _first=1
	# the padding line has no newline: read fails on it, which ends the loop where it should
	while IFS= read -r _l; do
		if [ -n "$_first" ]; then
			[ "$_l" = "# GRUB Environment Block" ] || return 1
			_first=
		fi
		case "$_l" in
		ibu_seq=*) [ -n "$_s" ] || _s=${_l#ibu_seq=} ;;
		ibu_check=*) [ -n "$_c" ] || _c=${_l#ibu_check=} ;;
		esac
	done < "$1"
	[ -z "$_first" ] || return 1
	# no markers: not a copy the agent wrote; GRUB and the agent do not trust it either
	case "$_s" in ''|*[!0-9]*) return 1 ;; esac
	[ "$_s" = "$_c" ] || return 1
	echo "$_s"
}

# ibu_env_update DIR NAME=VALUE... : set (empty VALUE: remove) variables in both copies, the
# way the agent writes them: seq+1, primary rewritten in place and synced before the backup,
# so one copy is always whole. Returns 1 when no valid copy exists.
ibu_env_update() {
	_dir=$1; shift
	_best= _bestseq=-1
	for _f in "$_dir/grubenv" "$_dir/grubenv.bak"; do
		_s=$(ibu_env_valid "$_f") || continue
		if [ "$_s" -gt "$_bestseq" ]; then _best=$_f; _bestseq=$_s; fi
	done
	[ -n "$_best" ] || return 1
	# the variables but the markers, minus those named in the arguments, then the arguments' new values
	_vars=
	while IFS= read -r _l; do
		case "$_l" in '' | '#'* | ibu_seq=* | ibu_check=*) continue ;; esac
		_keep=1
		for _kv in "$@"; do
			case "$_l" in "${_kv%%=*}="*) _keep= ;; esac
		done
		[ -n "$_keep" ] && _vars="$_vars$_l
"
	done < "$_best"
	for _kv in "$@"; do
		[ -n "${_kv#*=}" ] && _vars="$_vars$_kv
"
	done
	_seq=$((_bestseq + 1))
	_body="# GRUB Environment Block
ibu_seq=$_seq
${_vars}ibu_check=$_seq"
	_pad=$((1024 - ${#_body} - 1))
	[ $_pad -ge 0 ] || return 1
	# _pad '#' characters, by doubling
	_p= _u='#' _n=$_pad
	while [ $_n -gt 0 ]; do
		[ $((_n % 2)) = 1 ] && _p="$_p$_u"
		_u="$_u$_u" _n=$((_n / 2))
	done
	for _f in "$_dir/grubenv" "$_dir/grubenv.bak"; do
		# a whole 1024-byte file is rewritten in place (same blocks: GRUB sees it without a
		# journal checkpoint); a missing or wrong-size one is written anew
		_conv=; [ "$(ibu_env_size "$_f")" = 1024 ] && _conv=conv=notrunc
		printf '%s\n%s' "$_body" "$_p" | dd of="$_f" $_conv 2>/dev/null || return 1
		sync
	done
}

# ibu_clear_try HOSTMNT: the initramfs' part when GRUB cannot write its env: clear try_image
# (ibu.tryclear=1) and record this boot's attempt (ibu.attempt/tally/bad), in one update of both copies
ibu_clear_try() {
	[ "$IBU_TRYCLEAR" = 1 ] || [ -n "$IBU_ATTEMPT" ] || return 0
	_mnt=$1
	set --
	[ "$IBU_TRYCLEAR" = 1 ] && set -- try_image=
	[ -n "$IBU_ATTEMPT" ] && set -- "$@" ibu_attempt="$IBU_ATTEMPT" ibu_tally="$IBU_TALLY" ibu_bad="$(echo $IBU_BAD)"
	if ibu_env_update "$_mnt/boot/grub" "$@"; then
		ibu_log "wrote $* in $_mnt/boot/grub/grubenv{,.bak} (GRUB cannot write there)"
	else
		ibu_log "WARNING: no valid grubenv in $_mnt/boot/grub; could not write $*"
	fi
}
