#!/usr/bin/env bash
# Restore the collector's SQLite database from a backup made by backup.sh.
#
#   restore.sh BACKUP [--db PATH] [--service NAME|none] [--yes]
#
# BACKUP is a collector-*.db.gz (or a plain .db). Steps:
#   1. the backup is decompressed to a temporary file and checked
#      (PRAGMA integrity_check) before anything else is touched;
#   2. the collector service is stopped if it runs (--service, default
#      loa-collector; "none" when no systemd unit manages it, e.g. tests);
#   3. the current database is saved next to it as PATH.before-restore-<time>
#      (itself through the backup API), so a restore can be undone;
#   4. the backup is written into PATH through SQLite's backup API, which
#      takes SQLite's locks and handles the WAL and -shm files correctly;
#   5. the service is started again (also when a step above failed).
# Without --yes it asks before overwriting.
set -euo pipefail

DB=/var/lib/loa-collector/collector.db
SERVICE=loa-collector
YES=0
BACKUP=""
PYTHON=${LOA_PYTHON:-python3}

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --db) DB=$2; shift 2 ;;
    --service) SERVICE=$2; shift 2 ;;
    --yes|-y) YES=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "restore.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    *)
      if [ -n "$BACKUP" ]; then echo "restore.sh: one BACKUP only" >&2; exit 2; fi
      BACKUP=$1; shift ;;
  esac
done
if [ -z "$BACKUP" ]; then usage >&2; exit 2; fi
if [ ! -f "$BACKUP" ]; then echo "restore.sh: no backup file $BACKUP" >&2; exit 1; fi

umask 077
work=$(mktemp -d)
was_active=0
cleanup() {
  rm -rf "$work"
  if [ "$was_active" -eq 1 ]; then
    systemctl start "$SERVICE" || echo "restore.sh: could not start $SERVICE again" >&2
  fi
}
trap cleanup EXIT

candidate="$work/restore.db"
case "$BACKUP" in
  *.gz) gzip -dc "$BACKUP" > "$candidate" ;;
  *) cp "$BACKUP" "$candidate" ;;
esac

"$PYTHON" - "$candidate" <<'PY'
import sqlite3
import sys

path = sys.argv[1]
try:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    result = db.execute("PRAGMA integrity_check").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
except sqlite3.DatabaseError as exc:
    sys.exit(f"restore.sh: the backup is not a usable SQLite database: {exc}")
if result != "ok":
    sys.exit(f"restore.sh: the backup failed integrity_check: {result}")
print(f"restore.sh: backup checked (schema version {version})")
PY

if [ "$YES" -ne 1 ]; then
  read -r -p "Overwrite $DB with $BACKUP? [y/N] " answer
  case "$answer" in y|Y|yes) ;; *) echo "restore.sh: nothing changed"; exit 1 ;; esac
fi

if [ "$SERVICE" != none ] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-active --quiet "$SERVICE"; then
  systemctl stop "$SERVICE"
  was_active=1
fi

"$PYTHON" - "$candidate" "$DB" "$(date -u +%Y%m%dT%H%M%SZ)" <<'PY'
import os
import sqlite3
import sys

src_path, db_path, stamp = sys.argv[1:4]
if os.path.exists(db_path):
    keep = f"{db_path}.before-restore-{stamp}"
    live = sqlite3.connect(db_path, timeout=60)
    saved = sqlite3.connect(keep)
    live.backup(saved)
    saved.execute("PRAGMA journal_mode=DELETE")
    saved.close()
    live.close()
    print(f"restore.sh: the previous database is saved as {keep}")
src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
dst = sqlite3.connect(db_path, timeout=60)
src.backup(dst)
# The collector runs its database in WAL mode.
dst.execute("PRAGMA journal_mode=WAL")
dst.close()
src.close()
PY

# A restore run as root must leave the files to the database directory's owner.
if [ "$(id -u)" -eq 0 ]; then
  owner=$(stat -c '%u:%g' "$(dirname "$DB")")
  for f in "$DB" "$DB-wal" "$DB-shm"; do
    if [ -e "$f" ]; then chown "$owner" "$f"; fi
  done
fi
echo "restore.sh: $DB restored from $BACKUP"
