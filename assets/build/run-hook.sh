#!/bin/sh
# Runs one spec hook for mmdebstrap and keeps what ibu needs to report a failure: its output in
# LOG and its exit status in LOG.rc. Usage: run-hook.sh LOG HOOK ROOT (cwd: the spec's directory).
LOG="$1"; HOOK="$2"; R="$3"
IBU_ROOT="$R" "$HOOK" "$R" > "$LOG" 2>&1 < /dev/null
rc=$?
echo "$rc" > "$LOG.rc"
exit "$rc"
