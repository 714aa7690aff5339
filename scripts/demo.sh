#!/usr/bin/env bash
# The one-command demo: install what is missing (scripts/setup.sh: mosquitto,
# .venv with loa-fleet), then run Mosquitto, the collector and a simulated
# district (loa-sim demo: fleet_sim/demo.py). Ctrl-C stops it all.
#
#   bash scripts/demo.sh [--scenario lam-thao] [--http-port 8080] [--duration S] ...
#
# LOA_DEMO_SKIP_SETUP=1 skips the installation step (an already set-up checkout).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${LOA_DEMO_SKIP_SETUP:-}" != "1" ]; then
  LOA_EXTRAS=${LOA_EXTRAS:-collector} bash scripts/setup.sh
fi
# exec: the demo gets Ctrl-C and SIGTERM itself, and stops its children in order.
exec .venv/bin/loa-sim demo "$@"
