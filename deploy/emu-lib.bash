# shellcheck shell=bash
# Helpers for Debian chroots of a controller's architecture run on this
# machine through qemu-user under proot; sourced by build-wheelhouse.sh and
# test-install-emulated.sh. Not run on controllers.

# Debian architecture -> qemu-user binary name.
emu_qemu() {
  case "$1" in
    arm64) echo qemu-aarch64-static ;;
    armhf) echo qemu-arm-static ;;
    *) return 1 ;;
  esac
}

emu_native() { [ "$1" = "$(dpkg --print-architecture)" ]; }

emu_check_arch() {
  local need=(debootstrap proot)
  emu_native "$1" || {
    emu_qemu "$1" >/dev/null || { echo "unsupported architecture: $1 (arm64, armhf or $(dpkg --print-architecture))" >&2; return 1; }
    need+=("$(emu_qemu "$1")")
  }
  local tool missing=()
  for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v "$tool" >/dev/null \
      || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]} (apt-get install debootstrap proot qemu-user-static)" >&2
    return 1
  fi
}

# The Debian mirror this machine's apt uses (deb822 .sources or one-line .list).
emu_mirror() {
  local uri
  uri=$(grep -hsE '^[[:space:]]*URIs:[[:space:]]*[^[:space:]]+/debian/?[[:space:]]*$' \
    /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -n 1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hsE '^[[:space:]]*deb[[:space:]]+[^[:space:]]+/debian/?[[:space:]]' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | head -n 1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# emu_binfmt ARCH: have the kernel run ARCH's binaries through qemu-user
# (what systemd-binfmt does at boot from qemu-user-static's binfmt.d file; the
# F flag opens the interpreter now, so it needs no copy inside the chroot).
emu_binfmt() {
  emu_native "$1" && return 0
  local name reg=/proc/sys/fs/binfmt_misc
  name=$(emu_qemu "$1")
  name=${name%-static}
  if [ ! -e "$reg/register" ]; then
    mount -t binfmt_misc binfmt_misc "$reg" 2>/dev/null || return 1
  fi
  if [ -e "$reg/$name" ]; then
    grep -qx enabled "$reg/$name"
    return
  fi
  [ -f "/usr/lib/binfmt.d/$name.conf" ] && cat "/usr/lib/binfmt.d/$name.conf" >"$reg/register"
}

# emu_run ARCH ROOTFS COMMAND... : run COMMAND inside ROOTFS as root, with the
# host's /proc, /dev and /sys and the extra "HOST:GUEST" bindings in the
# EMU_BINDS array, in a mount namespace of its own (nothing stays mounted
# after it). The chroot shares the host's network unless EMU_NONET=1, which
# gives it a network namespace with nothing in it (an offline controller).
# Without binfmt_misc it falls back to proot -q (arm64 only: proot 5.1 does
# not translate statx, which armhf's glibc uses for every stat).
emu_run() {
  local arch=$1 root
  root=$(cd "$2" && pwd)
  shift 2
  local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    LANG=C.UTF-8 TERM=dumb)
  local b nb=0
  [ -z "${EMU_BINDS+set}" ] || nb=${#EMU_BINDS[@]}
  if emu_binfmt "$arch"; then
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private ${EMU_NONET:+--net} -- /bin/bash -euc '
      r=$1; n=$2; shift 2
      mount --rbind /proc "$r/proc"; mount --rbind /dev "$r/dev"; mount --rbind /sys "$r/sys"
      for ((i = 0; i < n; i++)); do
        mkdir -p "$r${1#*:}"; mount --bind "${1%%:*}" "$r${1#*:}"; shift
      done
      if [ -n "${EMU_NONET:-}" ]; then ip link set lo up 2>/dev/null || true; fi
      exec chroot "$r" "$@"' _ "$root" "$nb" ${EMU_BINDS[@]+"${EMU_BINDS[@]}"} \
      /usr/bin/env -i "${envs[@]}" "$@"
    return
  fi
  [ "$arch" != armhf ] || { echo "emu: armhf needs binfmt_misc (mount it, or run as root)" >&2; return 1; }
  local q=()
  emu_native "$arch" || q=(-q "$(emu_qemu "$arch")")
  local binds=(-b /proc -b /dev -b /sys)
  for b in ${EMU_BINDS[@]+"${EMU_BINDS[@]}"}; do binds+=(-b "$b"); done
  # PROOT_NO_SECCOMP: proot's seccomp acceleration mishandles some syscalls of
  # qemu-user; plain ptrace is slower but exact.
  env -i "${envs[@]}" PROOT_NO_SECCOMP=1 ${EMU_NONET:+unshare --net} \
    proot "${q[@]}" -r "$root" "${binds[@]}" -w / "$@"
}

# emu_base_rootfs ARCH DIR MIRROR: a bookworm minbase + python3 chroot in DIR
# (kept and reused once complete: DIR/.loa-ready).
emu_base_rootfs() {
  local arch=$1 dir=$2 mirror=$3
  [ -f "$dir/.loa-ready" ] && return 0
  case "$dir" in /*) ;; *) dir=$PWD/$dir ;; esac
  echo "emu: debootstrap bookworm $arch into $dir from $mirror (first stage)"
  rm -rf "$dir"
  mkdir -p "$dir"
  PATH=$PATH:/usr/sbin:/sbin debootstrap --foreign --arch="$arch" --variant=minbase \
    --include=python3 bookworm "$dir" "$mirror" || return 1
  echo "emu: debootstrap second stage in the chroot ($arch)"
  emu_run "$arch" "$dir" /usr/bin/env DEBOOTSTRAP_DIR=/debootstrap /debootstrap/debootstrap --second-stage || return 1
  printf 'deb %s bookworm main\n' "$mirror" >"$dir/etc/apt/sources.list"
  emu_run "$arch" "$dir" /usr/bin/apt-get clean || return 1
  touch "$dir/.loa-ready"
}
