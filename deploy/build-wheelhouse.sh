#!/usr/bin/env bash
# Build the agent's offline wheelhouse for a controller's architecture, inside a
# Debian bookworm chroot of that architecture run through qemu-user (no real
# ARM board needed). Run as root on a Debian machine with internet (Debian's
# archive and PyPI).
#
#   build-wheelhouse.sh ARCH OUTDIR [--work DIR] [--mirror URL] [--constraints FILE]
#
#   ARCH               arm64 (64-bit Raspberry Pi OS), armhf (32-bit Raspberry Pi OS,
#                      ARMv7), or the build machine's own (amd64: no emulation)
#   OUTDIR             where the wheels go: loa-fleet, every library the agent
#                      needs (compiled in the chroot where PyPI has no wheel for
#                      ARCH, e.g. msgspec and psutil on armhf), and pip itself
#                      (install-agent.sh bootstraps pip from it when the
#                      controller has no python3-venv)
#   --work DIR         where the chroots are kept and reused (default: build/emu
#                      in the source tree; about 700 MB per architecture)
#   --mirror URL       Debian mirror (default: the first deb.debian.org-style
#                      URI in this machine's apt sources, else deb.debian.org)
#   --constraints FILE pin versions (pip constraints format); default: none, the
#                      newest in pyproject.toml's ranges
#
# Two chroots per architecture are made with debootstrap and kept in --work:
#   bookworm-ARCH-base   minbase + python3: what a Raspberry Pi OS Lite
#                        controller has (no compiler, no python3-venv);
#                        deploy/test-install-emulated.sh installs into a copy
#   bookworm-ARCH-build  the same + gcc, python3-dev, python3-venv: the wheels
#                        are built here, never on the host, so each wheel is
#                        built against the controller's own Python and libc
# Foreign chroots run under proot with qemu-ARCH-static (Debian packages
# proot, qemu-user-static), which needs neither binfmt_misc nor chroot(2)
# privileges beyond ordinary root, so this works inside containers too.
set -euo pipefail

die() { echo "build-wheelhouse: $*" >&2; exit 1; }
step() { echo "build-wheelhouse: $(date -u +%H:%M:%S) $*"; }
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }

SRC=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=/dev/null # deploy/emu-lib.bash (shellchecked on its own)
. "$SRC/deploy/emu-lib.bash"

[ $# -ge 1 ] && case "$1" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] || { usage >&2; exit 2; }
ARCH=$1
OUT=$2
shift 2
WORK=$SRC/build/emu
MIRROR=""
CONSTRAINTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --constraints) CONSTRAINTS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-wheelhouse: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap needs it)"
emu_check_arch "$ARCH"
[ -z "$CONSTRAINTS" ] || [ -f "$CONSTRAINTS" ] || die "--constraints $CONSTRAINTS: no such file"
MIRROR=${MIRROR:-$(emu_mirror)}

# pip in the chroot trusts what this machine trusts (a site's TLS-inspecting
# proxy CA included), and ignores this machine's pip config.
PIP_ENV=(PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/host-ca.crt)
host_ca() {
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] || bundle=$(python3 -c 'import ssl; print(ssl.get_default_verify_paths().cafile or "")')
  if [ -z "$bundle" ] || [ ! -f "$bundle" ]; then die "no CA bundle on this machine for pip's TLS"; fi
  mkdir -p "$BUILD/etc/ssl"
  cp "$bundle" "$BUILD/etc/ssl/host-ca.crt"
}

BASE=$WORK/bookworm-$ARCH-base
BUILD=$WORK/bookworm-$ARCH-build
mkdir -p "$WORK" "$OUT"
OUT=$(cd "$OUT" && pwd)

emu_base_rootfs "$ARCH" "$BASE" "$MIRROR"

if [ ! -f "$BUILD/.loa-ready" ]; then
  step "making the build chroot $BUILD (base + gcc, python3-dev, python3-venv)"
  # Every step below is idempotent: an interrupted build resumes here.
  if [ ! -d "$BUILD" ]; then
    cp -a "$BASE" "$BUILD"
    rm -f "$BUILD/.loa-ready"
  fi
  cp /etc/resolv.conf "$BUILD/etc/resolv.conf"
  host_ca
  emu_run "$ARCH" "$BUILD" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get -o APT::Sandbox::User=root -q update
  emu_run "$ARCH" "$BUILD" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get -o APT::Sandbox::User=root -q -y --no-install-recommends install \
    gcc libc6-dev python3-dev python3-venv
  emu_run "$ARCH" "$BUILD" /usr/bin/python3 -m venv /opt/wheel-build
  emu_run "$ARCH" "$BUILD" /usr/bin/env "${PIP_ENV[@]}" \
    /opt/wheel-build/bin/python -m pip -q install --upgrade pip wheel
  emu_run "$ARCH" "$BUILD" /usr/bin/apt-get clean
  touch "$BUILD/.loa-ready"
fi

# loa-fleet itself is pure Python: build it once from this tree, on the host.
step "building the loa-fleet wheel from $SRC"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -a "$SRC/pyproject.toml" "$SRC/README.md" "$stage/"
for pkg in fleet_protocol firmware_shims edge_agent collector; do cp -a "$SRC/$pkg" "$stage/"; done
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$OUT"/loa_fleet-*.whl
python3 -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$OUT" "$stage" 2>/dev/null \
  || python3 -m pip wheel -q --no-deps --wheel-dir "$OUT" "$stage"
LOA_WHEEL=$(basename "$(compgen -G "$OUT/loa_fleet-*.whl" | head -n 1)")

# Everything else inside the chroot: pip picks (or compiles) wheels for the
# chroot's own CPU, Python and libc.
step "resolving and building the agent's libraries for $ARCH (compiling what has no wheel)"
mkdir -p "$BUILD/wheelhouse" "$BUILD/constraints"
rm -f "$BUILD/wheelhouse"/*
cp "$OUT/$LOA_WHEEL" "$BUILD/wheelhouse/"
pin=()
if [ -n "$CONSTRAINTS" ]; then
  cp "$CONSTRAINTS" "$BUILD/constraints/c.txt"
  pin=(--constraint /constraints/c.txt)
fi
t0=$(date +%s)
host_ca
emu_run "$ARCH" "$BUILD" /usr/bin/env "${PIP_ENV[@]}" \
  /opt/wheel-build/bin/python -m pip wheel -q --wheel-dir /wheelhouse \
  --find-links /wheelhouse "${pin[@]}" "/wheelhouse/$LOA_WHEEL"
emu_run "$ARCH" "$BUILD" /usr/bin/env "${PIP_ENV[@]}" \
  /opt/wheel-build/bin/python -m pip download -q --dest /wheelhouse --only-binary=:all: pip
cp "$BUILD/wheelhouse"/*.whl "$OUT/"
step "built in $(( $(date +%s) - t0 )) s:"
compiled=""
for whl in "$OUT"/*.whl; do
  echo "  ${whl##*/}"
  case "$whl" in *-linux_armv7l.whl | *-linux_aarch64.whl | *-linux_x86_64.whl) compiled+=" ${whl##*/}" ;; esac
done
if [ -n "$compiled" ]; then echo "  (compiled here, PyPI has no wheel for $ARCH:$compiled)"; fi
