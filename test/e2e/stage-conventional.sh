#!/usr/bin/env bash
# stage-conventional.sh ROOT NODEROOT -- puts the ibu agent onto a conventional Debian root (the
# mounted root fs of make-conventional-disk.sh) the way a vendor's package would: the project at
# /opt/ibu (from a stage-node-root.sh tree), and this host's node with the libraries ldd names in
# /opt/ibu-node (run through their own loader: the host's node is built against newer libraries
# than bookworm's), called as /usr/local/bin/ibu-node. The guest's own tools (mount, e2fsck,
# dpkg-query, update-grub, fsfreeze) stay the distribution's.
set -euo pipefail
ROOT=$1 NODEROOT=$2
NODE=$(command -v node)
rm -rf "$ROOT/opt/ibu" "$ROOT/opt/ibu-node"
mkdir -p "$ROOT/opt/ibu-node/lib" "$ROOT/usr/local/bin"
cp -a "$NODEROOT/opt/ibu" "$ROOT/opt/ibu"
cp "$NODE" "$ROOT/opt/ibu-node/node"
{ ldd "$NODE"; find "$ROOT/opt/ibu/node_modules" -name '*.node' -type f -exec ldd {} \; 2>/dev/null; } | grep -o '/[^ ]*' | sort -u | while read -r f; do
  cp -L "$f" "$ROOT/opt/ibu-node/lib/${f##*/}"
done
cat > "$ROOT/usr/local/bin/ibu-node" <<'EOT'
#!/bin/sh
exec /opt/ibu-node/lib/ld-linux-x86-64.so.2 --library-path /opt/ibu-node/lib /opt/ibu-node/node "$@"
EOT
chmod 755 "$ROOT/usr/local/bin/ibu-node"
