#!/usr/bin/env bash
# Install the loa-fleet server: Mosquitto with loa-fleet's config, the fleet
# CA and broker certificate, the collector, and nightly database backups.
# Debian 12 (or Ubuntu 22.04+). Run as root.
#
#   install-server.sh --host NAME [--host NAME ...] [--wheelhouse DIR] [--source DIR]
#                     [--prefix DIR] [--ca-dir DIR] [--no-start]
#
#   --host NAME       a DNS name or IP address devices use to reach the broker;
#                     repeat for each (they all go into the server certificate)
#   --wheelhouse DIR  install loa-fleet[collector] offline from DIR
#   --source DIR      loa-fleet source tree (default: the tree this script is in)
#   --prefix DIR      virtual environment and deploy files (default /opt/loa-fleet)
#   --ca-dir DIR      the fleet CA (default /etc/loa-fleet/ca; created if missing;
#                     keep a copy of ca.key offline: it can admit any device)
#   --no-start        install and enable, but do not (re)start the services
#
# Idempotent: an existing CA, server certificate, password file, collector
# password and collector.toml are kept. Delete server.crt to reissue it.
set -euo pipefail

PREFIX=/opt/loa-fleet
WHEELHOUSE=""
SOURCE=$(cd "$(dirname "$0")/.." && pwd)
CA_DIR=/etc/loa-fleet/ca
START=1
HOSTS=()
BROKER_DIR=/etc/mosquitto/loa
CONF_DIR=/etc/loa-collector
SERVICE_USER=loa-collector

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install-server: $*" >&2; exit 1; }
step() { echo "install-server: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --host) HOSTS+=("$2"); shift 2 ;;
    --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
    --source) SOURCE=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --ca-dir) CA_DIR=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-server: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
[ ${#HOSTS[@]} -gt 0 ] || die "give at least one --host (the broker's name or IP for devices)"
DEPLOY="$SOURCE/deploy"
[ -f "$DEPLOY/mosquitto/mosquitto.conf" ] || die "no loa-fleet deploy files under $SOURCE"

# --- packages ----------------------------------------------------------------------
missing=()
for p in mosquitto python3-venv sqlite3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  step "creating system user $SERVICE_USER"
  useradd --system --user-group --home-dir /var/lib/loa-collector --no-create-home \
    --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# --- collector software ------------------------------------------------------------
VENV="$PREFIX/venv"
mkdir -p "$PREFIX"
# The distribution's Python: the service user must be able to run it.
SYSTEM_PY=${PYTHON:-/usr/bin/python3}
[ -x "$VENV/bin/python" ] || "$SYSTEM_PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [ -n "$WHEELHOUSE" ]; then
  step "installing loa-fleet[collector] from $WHEELHOUSE (offline)"
  "${PIP[@]}" install --no-index --find-links "$WHEELHOUSE" --upgrade "loa-fleet[collector]"
else
  step "installing loa-fleet[collector] from $SOURCE"
  "${PIP[@]}" install --upgrade "${SOURCE}[collector]"
fi
mkdir -p "$PREFIX/deploy" "$PREFIX/docs"
cp -r "$DEPLOY/." "$PREFIX/deploy/"
if [ -f "$SOURCE/docs/deploy.md" ]; then cp "$SOURCE/docs/deploy.md" "$PREFIX/docs/"; fi
PY="$VENV/bin/python"

# --- fleet CA and the broker's certificate ------------------------------------------
if [ ! -f "$CA_DIR/ca.crt" ]; then
  step "creating the fleet CA in $CA_DIR"
  install -d -m 0700 "$CA_DIR"
  "$PY" -m collector.tls ca --ca-dir "$CA_DIR"
fi
install -d -m 0750 -o root -g mosquitto "$BROKER_DIR"
if [ ! -f "$BROKER_DIR/server.crt" ]; then
  step "issuing the broker certificate for ${HOSTS[*]}"
  "$PY" -m collector.tls server --ca-dir "$CA_DIR" --out "$BROKER_DIR" "${HOSTS[@]}"
fi

# --- Mosquitto -----------------------------------------------------------------------
step "configuring Mosquitto ($BROKER_DIR)"
install -m 0640 -o root -g mosquitto "$DEPLOY/mosquitto/mosquitto.conf" "$BROKER_DIR/mosquitto.conf"
install -m 0640 -o root -g mosquitto "$DEPLOY/mosquitto/acl" "$BROKER_DIR/acl"
[ -f "$BROKER_DIR/passwd" ] || install -m 0640 -o root -g mosquitto /dev/null "$BROKER_DIR/passwd"
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [ ! -f "$CONF_DIR/mqtt-password" ]; then
  step "creating the collector's MQTT password"
  # Generated and hashed in Python: the password never appears on a command line.
  "$PY" - "$CONF_DIR/mqtt-password" "$BROKER_DIR/passwd" <<'PY'
import secrets
import sys
from pathlib import Path

from collector.provision import hash_password, set_password_entry
from collector.tls import write_file

secret_file, passwd = Path(sys.argv[1]), Path(sys.argv[2])
password = secrets.token_urlsafe(32)
write_file(secret_file, f"{password}\n".encode(), mode=0o640)
set_password_entry(passwd, "loa_collector", hash_password(password))
PY
  chgrp "$SERVICE_USER" "$CONF_DIR/mqtt-password"
fi
chown root:mosquitto "$BROKER_DIR"/*
chmod 0640 "$BROKER_DIR"/*
chmod 0644 "$BROKER_DIR/ca.crt" "$BROKER_DIR/server.crt"
install -d /etc/systemd/system/mosquitto.service.d
install -m 0644 "$DEPLOY/systemd/mosquitto.service.d/loa-fleet.conf" \
  /etc/systemd/system/mosquitto.service.d/loa-fleet.conf

# --- collector -------------------------------------------------------------------------
if [ ! -f "$CONF_DIR/collector.toml" ]; then
  step "writing $CONF_DIR/collector.toml (all settings: $PREFIX/deploy/collector.example.toml)"
  (umask 027 && cat > "$CONF_DIR/collector.toml") <<EOF
# loa-fleet collector. Every setting and its default: $PREFIX/deploy/collector.example.toml
[mqtt]
host = "127.0.0.1"
port = 1883
username = "loa_collector"
password_file = "$CONF_DIR/mqtt-password"

[db]
path = "/var/lib/loa-collector/collector.db"
EOF
  chgrp "$SERVICE_USER" "$CONF_DIR/collector.toml"
fi
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/loa-collector
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/backups/loa-collector
runuser -u "$SERVICE_USER" -- "$VENV/bin/loa-collector" db migrate --config "$CONF_DIR/collector.toml"
for unit in loa-collector.service loa-collector-backup.service loa-collector-backup.timer; do
  install -m 0644 "$DEPLOY/systemd/$unit" "/etc/systemd/system/$unit"
done

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable mosquitto.service loa-collector.service loa-collector-backup.timer
  if [ "$START" -eq 1 ]; then
    systemctl restart mosquitto.service
    systemctl restart loa-collector.service
    systemctl start loa-collector-backup.timer
  fi
else
  echo "install-server: systemd is not running here: enable the services yourself" >&2
fi
step "done. Next: create an admin (loa-collector users add ...), then provision devices:"
step "  $VENV/bin/loa-collector provision DEVICE_ID --commune CODE --broker-url mqtts://${HOSTS[0]} --out DIR"
