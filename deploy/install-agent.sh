#!/usr/bin/env bash
# Install the loa-fleet edge agent on a speaker cluster's controller
# (Raspberry Pi OS bookworm or any Debian 12 with Python >= 3.11). Run as root.
#
#   install-agent.sh --bundle DIR [--wheelhouse DIR] [--source DIR] [--prefix DIR] [--no-start]
#
#   --bundle DIR      the device's bundle from `loa-collector provision`
#                     (agent.toml, ca.crt, mqtt-password or client.crt/client.key);
#                     installed into /etc/loa-agent. Optional on a re-install.
#   --wheelhouse DIR  install offline: every wheel comes from DIR, nothing from
#                     the network (see docs/deploy.md for building DIR)
#   --source DIR      loa-fleet source tree to install from when online
#                     (default: the tree this script is in)
#   --prefix DIR      where the virtual environment goes (default /opt/loa-fleet)
#   --no-start        install and enable, but do not (re)start the agent
#
# Idempotent: run it again to upgrade or to replace the bundle.
set -euo pipefail

PREFIX=/opt/loa-fleet
BUNDLE=""
WHEELHOUSE=""
SOURCE=$(cd "$(dirname "$0")/.." && pwd)
START=1
CONF_DIR=/etc/loa-agent
SERVICE_USER=loa

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install-agent: $*" >&2; exit 1; }
step() { echo "install-agent: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE=$2; shift 2 ;;
    --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
    --source) SOURCE=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-agent: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
DEPLOY="$SOURCE/deploy"
[ -f "$DEPLOY/systemd/loa-agent.service" ] || die "no loa-fleet deploy files under $SOURCE"
if [ -n "$BUNDLE" ]; then
  [ -f "$BUNDLE/agent.toml" ] || die "$BUNDLE/agent.toml missing: not a provisioning bundle"
elif [ ! -f "$CONF_DIR/agent.toml" ]; then
  die "no $CONF_DIR/agent.toml yet: pass --bundle DIR (from loa-collector provision)"
fi
if [ -n "$WHEELHOUSE" ]; then
  compgen -G "$WHEELHOUSE/loa_fleet-*.whl" >/dev/null \
    || die "$WHEELHOUSE has no loa_fleet-*.whl: build it as docs/deploy.md shows"
fi

# The distribution's Python: the venv links to it, and the service user must
# be able to run it (an interpreter under /root, e.g. pyenv's, is not).
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3) || die "python3 not found"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 needed, found $("$PY" -V 2>&1)"

# --- service user ------------------------------------------------------------------
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  step "creating system user $SERVICE_USER"
  useradd --system --user-group --home-dir /var/lib/loa-agent --no-create-home \
    --shell /usr/sbin/nologin "$SERVICE_USER"
fi
usermod -a -G dialout "$SERVICE_USER"
# The modem power-cycle hook may drive a GPIO line (group gpio on Raspberry Pi OS).
if getent group gpio >/dev/null; then usermod -a -G gpio "$SERVICE_USER"; fi

# --- virtual environment -----------------------------------------------------------
VENV="$PREFIX/venv"
mkdir -p "$PREFIX"
if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Raspberry Pi OS Lite may lack python3-venv's ensurepip, and offline it
    # cannot be installed: make the venv without pip and bootstrap pip from
    # the wheelhouse's own pip wheel.
    rm -rf "$VENV"
    "$PY" -m venv --without-pip "$VENV"
    pipwheel=$(compgen -G "${WHEELHOUSE:-/nonexistent}/pip-*.whl" | head -n 1) \
      || die "python3 -m venv failed and no pip wheel in the wheelhouse: apt-get install python3-venv"
    "$VENV/bin/python" "$pipwheel/pip" install -q --no-index --find-links "$WHEELHOUSE" pip
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [ -n "$WHEELHOUSE" ]; then
  step "installing loa-fleet from the wheelhouse $WHEELHOUSE (offline)"
  "${PIP[@]}" install --no-index --find-links "$WHEELHOUSE" --upgrade loa-fleet
else
  step "installing loa-fleet from $SOURCE"
  "${PIP[@]}" install --upgrade "$SOURCE"
fi
# The agent's floor on a 512 MB controller: make sure no collector library crept in.
if "$VENV/bin/python" -c 'import aiohttp' 2>/dev/null; then
  echo "install-agent: warning: aiohttp is installed in $VENV; the agent does not need it" >&2
fi
mkdir -p "$PREFIX/deploy" "$PREFIX/docs"
cp -r "$DEPLOY/." "$PREFIX/deploy/"
if [ -f "$SOURCE/docs/deploy.md" ]; then cp "$SOURCE/docs/deploy.md" "$PREFIX/docs/"; fi

# --- configuration bundle ----------------------------------------------------------
# root:loa 1770 directory, files root:loa 0640: the agent (group loa) reads its
# credentials, cannot change them, and nobody else can read them. The sticky
# bit lets the agent replace only files it owns: agent.toml (owned by loa, so a
# config pushed from the district can be applied and rolled back) and the
# agent.toml.prev/.pending it writes itself.
install -d -m 1770 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [ -n "$BUNDLE" ]; then
  step "installing the bundle from $BUNDLE into $CONF_DIR"
  for f in agent.toml ca.crt mqtt-password client.crt client.key tunnel_ed25519 \
      tunnel_known_hosts upgrade.pub; do
    if [ -f "$BUNDLE/$f" ]; then
      owner=root
      if [ "$f" = agent.toml ]; then owner="$SERVICE_USER"; fi
      install -m 0640 -o "$owner" -g "$SERVICE_USER" "$BUNDLE/$f" "$CONF_DIR/$f"
    else
      # Re-provisioned into the other mode: the old credential must not linger.
      rm -f "${CONF_DIR:?}/$f"
    fi
  done
fi
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/loa-agent
install -d -m 0750 -o root -g "$SERVICE_USER" /var/log/loa-agent
# systemd starts /var/lib/loa-agent/current/bin/loa-agent. An install (or a
# re-install) starts from the environment just installed; upgrades from the
# district then move the link (edge_agent/upgrade.py).
ln -sfn "$VENV" /var/lib/loa-agent/current
chown -h "$SERVICE_USER:$SERVICE_USER" /var/lib/loa-agent/current
rm -f /var/lib/loa-agent/upgrade.pending
# Check the config as the service user: a bad field or an unreadable file
# fails here, with the field's name, instead of in a restart loop.
step "checking $CONF_DIR/agent.toml"
runuser -u "$SERVICE_USER" -- "$VENV/bin/python" -c \
  'import sys; from edge_agent.config import load_config; load_config(sys.argv[1])' \
  "$CONF_DIR/agent.toml" || die "$CONF_DIR/agent.toml does not load (see above)"

# --- system integration ------------------------------------------------------------
step "installing systemd unit, udev rules, log limits"
install -d /etc/systemd/system
install -m 0644 "$DEPLOY/systemd/loa-agent.service" /etc/systemd/system/loa-agent.service
systemd_version=0
if command -v systemctl >/dev/null; then
  systemd_version=$(systemctl --version | awk 'NR == 1 { print $2 }')
fi
if [ "${systemd_version:-0}" -ge 254 ]; then
  install -d /etc/systemd/system/loa-agent.service.d
  install -m 0644 "$DEPLOY/systemd/loa-agent.service.d/restart-backoff.conf" \
    /etc/systemd/system/loa-agent.service.d/restart-backoff.conf
fi
install -d /etc/udev/rules.d /etc/logrotate.d
install -m 0644 "$DEPLOY/udev/99-loa-fleet.rules" /etc/udev/rules.d/99-loa-fleet.rules
install -m 0644 "$DEPLOY/logrotate/loa-agent" /etc/logrotate.d/loa-agent
install -d /etc/systemd/journald.conf.d /var/log/journal
install -m 0644 "$DEPLOY/journald/loa-fleet.conf" /etc/systemd/journald.conf.d/loa-fleet.conf

if [ -d /run/systemd/system ]; then
  udevadm control --reload || true
  udevadm trigger --subsystem-match=tty || true
  systemctl restart systemd-journald
  systemctl daemon-reload
  systemctl enable loa-agent.service
  if [ "$START" -eq 1 ]; then
    systemctl restart loa-agent.service
    step "started: systemctl status loa-agent; journalctl -u loa-agent -f"
  fi
else
  echo "install-agent: systemd is not running here: enable loa-agent.service at boot yourself" >&2
fi
step "done in ${SECONDS} s; $(du -sh "$PREFIX" | cut -f1) in $PREFIX"
step "technicians: usermod -a -G $SERVICE_USER <login> to use loa-agent status"
