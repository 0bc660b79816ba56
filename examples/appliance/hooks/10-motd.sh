#!/bin/sh
# A spec hook: runs on the build host as root with the root tree as $1 (and $IBU_ROOT).
# Use `chroot "$1" CMD` for commands inside the image. Environment: docs/build.md.
set -eu
printf 'Welcome to %s %s\n' "$IBU_PRODUCT" "$IBU_VERSION" > "$1/etc/motd"
