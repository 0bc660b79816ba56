#!/bin/sh
# mmdebstrap customize hook of `ibu build lock`: records what was installed and where it came
# from while apt's lists are still in the root. $1 = root dir, $2 = output dir. Writes
#   installed.tsv  package, architecture, version (dpkg's view of the root)
#   archive.tsv    list file, package, version, architecture, Filename, SHA256, Size, Priority, Section
#                  for the installed versions (the archive's Priority/Section, which can differ
#                  from the .deb's own, decide what minbase marks automatic: buildlab cause 2)
#   releases/      the InRelease/Release files (the archive's identity: Date, Suite, Codename)
set -eu
R="$1"; O="$2"
mkdir -p "$O/releases"
dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Package}\t${Architecture}\t${Version}\n' | LC_ALL=C sort > "$O/installed.tsv"
cd "$R/var/lib/apt/lists"
for f in *InRelease *_Release; do [ -f "$f" ] && cp "$f" "$O/releases/"; done
: > "$O/archive.tsv"
for f in *_Packages; do
  [ -f "$f" ] || continue
  awk -v F="$f" -F'\t' 'NR==FNR { want[$1 "\t" $3] = 1; next }
    /^Package: /      { p = substr($0, 10) }
    /^Version: /      { v = substr($0, 10) }
    /^Architecture: / { a = substr($0, 15) }
    /^Filename: /     { fn = substr($0, 11) }
    /^SHA256: /       { sh = substr($0, 9) }
    /^Size: /         { sz = substr($0, 7) }
    /^Priority: /     { pr = substr($0, 11) }
    /^Section: /      { se = substr($0, 10) }
    /^$/ { if ((p "\t" v) in want) print F "\t" p "\t" v "\t" a "\t" fn "\t" sh "\t" sz "\t" pr "\t" se; p = v = a = fn = sh = sz = pr = se = "" }
    END  { if ((p "\t" v) in want) print F "\t" p "\t" v "\t" a "\t" fn "\t" sh "\t" sz "\t" pr "\t" se }' \
    "$O/installed.tsv" "$f" >> "$O/archive.tsv"
done
