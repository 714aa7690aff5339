#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check: lint, format, types, tests.
# Exits non-zero on any failure, including "no tests collected".
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium: the dashboard's browser tests; shellcheck: the deploy scripts' lint;
# debootstrap, qemu-user-static, proot: the emulated arm64 controller install;
# openssh-server/openssh-client: the reverse tunnel's jump host and client in tests;
# rabbitmq-server: the RabbitMQ broker tests (their own nodes; the system one is not used);
# postgresql: the server store's tests (initdb in a temporary folder, not the system cluster).
LOA_EXTRA_APT="chromium shellcheck debootstrap qemu-user-static proot openssh-server openssh-client rabbitmq-server postgresql ${LOA_EXTRA_APT:-}" LOA_EXTRAS=dev bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff check";  ruff check .
echo "== ruff format"; ruff format --check .
echo "== mypy";        mypy
echo "== pytest"
pytest "$@"
