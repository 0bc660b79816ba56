/**
 * The read-only variant of the example appliance (issue #22 item 4): examples/appliance with
 * `readonly: true` in its product spec, and a vendor package whose /etc changes from release to
 * release, so an upgrade has vendor changes to merge with the device's:
 *   /etc/acme/tuning.conf   changes every release; the device never edits it  -> the new default
 *   /etc/acme/policy.conf   changes every release; the device edits it        -> a conflict (rule)
 *   system users            acme-agent 1.1 adds `acme-telemetry`, 1.3 `acme-backup` (postinst)
 * All four releases start their service (the example's 3.0 is broken; here its failure must come
 * from rot on disk only). The spec dir is made anew from the example each time, with the same
 * bytes, so its releases are cached like the example's (test/e2e/appliance.ts).
 * No top-level side effects.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './harness.js';

/** What the variant's make-acme-agent.sh adds to the example's package (it calls the example's script first). */
const VENDOR_ETC = `#!/bin/sh
# The read-only variant's acme-agent: the example's package (make-acme-agent-base.sh) plus vendor
# files in /etc that change every release and system users added by later releases.
#   make-acme-agent.sh VERSION DIR [broken]   ("broken" is ignored: every release here is healthy)
set -eu
V=\${1:?usage: make-acme-agent.sh VERSION DIR}; OUT=\${2:?usage: make-acme-agent.sh VERSION DIR}
"$(dirname "$0")/make-acme-agent-base.sh" "$V" "$OUT"
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
dpkg-deb -R "$OUT/acme-agent_\${V}_all.deb" "$T/pkg"
mkdir -p "$T/pkg/etc/acme"
printf '# acme-agent %s tuning (vendor default)\\nworkers = %s\\n' "$V" "$(echo "$V" | tr -d .)" > "$T/pkg/etc/acme/tuning.conf"
printf '# acme-agent %s policy (vendor default)\\nupload = %s\\n' "$V" "https://acme.example/v$V" > "$T/pkg/etc/acme/policy.conf"
printf '/etc/acme/tuning.conf\\n/etc/acme/policy.conf\\n' > "$T/pkg/DEBIAN/conffiles"
USERS=
case "$V" in 1.0) ;; 1.1|1.2) USERS=acme-telemetry ;; *) USERS="acme-telemetry acme-backup" ;; esac
if [ -n "$USERS" ]; then
  printf '#!/bin/sh\\nset -e\\nfor u in %s; do getent passwd "$u" >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin "$u"; done\\n' "$USERS" > "$T/pkg/DEBIAN/postinst"
  chmod 755 "$T/pkg/DEBIAN/postinst"
fi
SOURCE_DATE_EPOCH=1735689600 dpkg-deb --root-owner-group -Zxz --build "$T/pkg" "$OUT/acme-agent_\${V}_all.deb" >/dev/null
`;

/** Writes the read-only variant of examples/appliance into `dir` (made anew; same bytes every time). */
export async function readonlyApplianceSpec(dir: string): Promise<string> {
  const src = path.join(repoRoot(), 'examples/appliance');
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.cp(src, dir, { recursive: true });
  await fsp.rm(path.join(dir, 'vendor'), { recursive: true, force: true });
  const spec = await fsp.readFile(path.join(dir, 'product.yaml'), 'utf8');
  await fsp.writeFile(
    path.join(dir, 'product.yaml'),
    `${spec.trimEnd()}\n# the root is read-only (and verified when published --verity); /etc and /var live on the host\nreadonly: true\n`,
  );
  await fsp.rename(path.join(dir, 'make-acme-agent.sh'), path.join(dir, 'make-acme-agent-base.sh'));
  await fsp.writeFile(path.join(dir, 'make-acme-agent.sh'), VENDOR_ETC, { mode: 0o755 });
  // fixed modes: they enter the cache key
  await fsp.chmod(path.join(dir, 'make-acme-agent.sh'), 0o755);
  return dir;
}
