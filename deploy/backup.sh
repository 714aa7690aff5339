#!/usr/bin/env bash
# Online backup of the collector's SQLite database, safe while the collector runs.
#
#   backup.sh [--db PATH] [--dest DIR] [--keep N]
#
# Uses SQLite's online backup API (Python's sqlite3.Connection.backup): the copy
# is one consistent snapshot even while the collector writes in WAL mode, which
# `cp` of the database file is not. The copy is checked (PRAGMA
# integrity_check), switched out of WAL mode so that it is one self-contained
# file, gzipped, fsynced and renamed into place: a backup file that exists is
# complete. The newest N backups are kept. Prints the backup's path.
#
# Run nightly by loa-collector-backup.timer; see docs/deploy.md.
set -euo pipefail

DB=/var/lib/loa-collector/collector.db
DEST=/var/backups/loa-collector
KEEP=14
PYTHON=${LOA_PYTHON:-python3}

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --db) DB=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "backup.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$KEEP" in
  ''|*[!0-9]*) echo "backup.sh: --keep must be a number, got '$KEEP'" >&2; exit 2 ;;
esac
if [ ! -f "$DB" ]; then
  echo "backup.sh: no database at $DB" >&2
  exit 1
fi
mkdir -p "$DEST"
umask 077

# Milliseconds: two backups in one second must not overwrite each other.
stamp=$(date -u +%Y%m%dT%H%M%S.%3NZ)
name="collector-$stamp.db.gz"
tmp="$DEST/.$name.tmp"
trap 'rm -f "$tmp" "$tmp.db"' EXIT

"$PYTHON" - "$DB" "$tmp.db" <<'PY'
import sqlite3
import sys

src_path, dst_path = sys.argv[1], sys.argv[2]
# Not mode=ro: a WAL reader may need to create the -shm index.
src = sqlite3.connect(src_path, timeout=60)
dst = sqlite3.connect(dst_path)
try:
    # pages=-1 (the default): the whole database in one step, so the copy is
    # one snapshot; in WAL mode the collector keeps writing meanwhile.
    src.backup(dst)
    dst.execute("PRAGMA journal_mode=DELETE")
    result = dst.execute("PRAGMA integrity_check").fetchone()[0]
    if result != "ok":
        sys.exit(f"backup.sh: the copy of {src_path} failed integrity_check: {result}")
finally:
    dst.close()
    src.close()
PY

gzip -c "$tmp.db" > "$tmp"
"$PYTHON" -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)' "$tmp"
mv "$tmp" "$DEST/$name"
rm -f "$tmp.db"

# Keep the newest $KEEP backups (names sort by time).
if [ "$KEEP" -gt 0 ]; then
  mapfile -t old < <(find "$DEST" -maxdepth 1 -name 'collector-*.db.gz' -printf '%f\n' | sort -r | tail -n +"$((KEEP + 1))")
  for f in "${old[@]}"; do
    rm -f -- "${DEST:?}/$f"
  done
fi
echo "$DEST/$name"
