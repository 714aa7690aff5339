#!/usr/bin/env bash
# Install what loa-fleet needs on a fresh Debian machine: system packages and
# a virtual environment (.venv) with loa-fleet. Idempotent.
#   LOA_EXTRAS     pip extras to install (default "dev": collector + test tools;
#                  the demo asks for "collector" only)
#   LOA_EXTRA_APT  further Debian packages (the test suite adds chromium and shellcheck)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(mosquitto mosquitto-clients openssl python3-venv ${LOA_EXTRA_APT:-})
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package may start a system broker with the unsafe default
# config; loa-fleet always starts its own from deploy/.

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${LOA_EXTRAS:-dev}]"
