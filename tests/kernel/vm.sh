#!/usr/bin/env bash
# The kernel lane (`sudo make test-kernel`): boot the distribution's stock kernel in a VM and run
# tests/kernel inside it, against the nftables backend on a real kernel queue. See docs/lab.md.
#
# 1. installs what is missing: qemu-system-x86, busybox-static, kmod, udev, file (apt), and
#    virtme-ng in its own venv under the cache directory;
# 2. downloads the current linux-image-*-amd64 package (the one `linux-image-amd64` depends on),
#    extracts it under the cache directory keyed by its version and runs depmod there;
# 3. uses KVM when it is usable (not PVM, /dev/kvm opens, QEMU starts with it), TCG otherwise;
# 4. boots that kernel ONCE with the host's root filesystem shared (copy-on-write: guest writes
#    outside the result directory are discarded) and runs one pytest process in it
#    (tests/kernel/guest.sh), using this checkout's .venv;
# 5. prints the guest's kernel, exit code and pytest's summary line, and exits with pytest's
#    code (5, no test ran, counts as a failure). A VM that cannot start fails; it never skips.
#
# Environment: KERNEL_VM_CACHE (default .cache/kernel-vm), KERNEL_VM_ACCEL (kvm|tcg, default:
# detect), KERNEL_VM_PACKAGE (a linux-image-* package name), KERNEL_VM_TIMEOUT (seconds, 1800),
# KERNEL_VM_MEMORY (1G), KERNEL_VM_CPUS (1), KERNEL_VM_PYTEST_ARGS (more pytest arguments).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${KERNEL_VM_CACHE:-$ROOT/.cache/kernel-vm}
VNG_VERSION=1.42
PACKAGES=(qemu-system-x86 busybox-static kmod udev file)
TIMEOUT=${KERNEL_VM_TIMEOUT:-1800}

say() { printf 'test-kernel: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (packages, namespaces, kernel queues): sudo make test-kernel"
[ -x "$ROOT/.venv/bin/python" ] || fail "no $ROOT/.venv: run make venv first"
STARTED=$(date +%s)

apt_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || fail "apt-get install ${missing[*]}"
}

virtme_ng() {
  local venv=$CACHE/vng
  [ -f "$venv/.installed-$VNG_VERSION" ] && return
  say "installing virtme-ng $VNG_VERSION in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  [ -x "$venv/bin/vng" ] || fail "virtme-ng did not install"
  touch "$venv/.installed-$VNG_VERSION"
}

# The package the distribution's kernel meta-package points at (Debian: linux-image-amd64).
kernel_package() {
  if [ -n "${KERNEL_VM_PACKAGE:-}" ]; then echo "$KERNEL_VM_PACKAGE"; return; fi
  local meta pkg
  for meta in linux-image-amd64 linux-image-generic; do
    pkg=$(apt-cache depends "$meta" 2>/dev/null \
      | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] && { echo "$pkg"; return; }
  done
}

kernel() {
  local pkg version dir tmp
  pkg=$(kernel_package)
  if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(kernel_package); fi
  [ -n "$pkg" ] || fail "apt knows no linux-image-amd64 (nor linux-image-generic) to boot"
  version=${pkg#linux-image-}
  version=${version#unsigned-}
  dir=$CACHE/kernels/$version
  if [ ! -f "$dir/.ready" ]; then
    say "downloading and extracting $pkg"
    tmp=$(mktemp -d "$CACHE/download.XXXXXX")
    chmod 755 "$tmp"  # apt's download sandbox user must write here
    (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null) || { rm -rf "$tmp"; fail "apt-get download $pkg"; }
    rm -rf "$dir" && mkdir -p "$dir"
    dpkg-deb -x "$tmp"/*.deb "$dir" && rm -rf "$tmp"
    depmod -b "$dir" "$version" || fail "depmod -b $dir $version"
    touch "$dir/.ready"
  fi
  KERNEL_VERSION=$version
  KERNEL_IMAGE=$dir/boot/vmlinuz-$version
  [ -f "$KERNEL_IMAGE" ] || fail "$pkg has no $KERNEL_IMAGE"
}

# KVM only where it runs an ordinary guest kernel: not PVM (it runs only PVM-built guests and a
# stock kernel hangs there), /dev/kvm opens read-write, and QEMU initialises the KVM accelerator.
kvm_usable() {
  if [ -e /sys/module/kvm_pvm ]; then ACCEL_WHY="PVM (/sys/module/kvm_pvm): a stock kernel hangs there"; return 1; fi
  if ! (: <>/dev/kvm) 2>/dev/null; then ACCEL_WHY="/dev/kvm cannot be opened"; return 1; fi
  if ! echo quit | timeout 20 qemu-system-x86_64 -accel kvm -machine q35 -display none \
      -nodefaults -S -monitor stdio >/dev/null 2>&1; then
    ACCEL_WHY="QEMU cannot start with -accel kvm"; return 1
  fi
  ACCEL_WHY="KVM usable"
}

accelerator() {
  case "${KERNEL_VM_ACCEL:-}" in
    kvm) ACCEL=kvm; ACCEL_WHY="KERNEL_VM_ACCEL=kvm" ;;
    tcg) ACCEL=tcg; ACCEL_WHY="KERNEL_VM_ACCEL=tcg" ;;
    "") if kvm_usable; then ACCEL=kvm; else ACCEL=tcg; fi ;;
    *) fail "KERNEL_VM_ACCEL must be kvm or tcg, not ${KERNEL_VM_ACCEL}" ;;
  esac
}

mkdir -p "$CACHE"
apt_packages
command -v qemu-system-x86_64 >/dev/null || fail "no qemu-system-x86_64: the VM cannot start"
virtme_ng
kernel
accelerator
PREPARED=$(date +%s)

OUT=$(mktemp -d /tmp/portguard-kernel-vm.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
vng_args=(--run "$KERNEL_IMAGE" --force-9p -m "${KERNEL_VM_MEMORY:-1G}" -p "${KERNEL_VM_CPUS:-1}"
          --rwdir="$OUT")
[ "$ACCEL" = tcg ] && vng_args+=(--disable-kvm)
say "booting $KERNEL_VERSION with $ACCEL ($ACCEL_WHY); prepared in $((PREPARED - STARTED)) s"
set +e
# QEMU reopens its stdout/stderr by /proc/self/fd/N: were they a file (CI's log), the reopen
# would truncate it. Through a pipe nothing before this point is lost.
PATH=$CACHE/vng/bin:$PATH timeout --kill-after=30 "$TIMEOUT" vng "${vng_args[@]}" \
  --exec "$ROOT/tests/kernel/guest.sh $OUT ${KERNEL_VM_PYTEST_ARGS:-}" </dev/null 2>&1 | cat
vng_rc=${PIPESTATUS[0]}
set -e
FINISHED=$(date +%s)

[ -f "$OUT/rc" ] || fail "the guest wrote no result (vng exit $vng_rc$([ $vng_rc = 124 ] && echo ": timed out after $TIMEOUT s")); see the output above"
rc=$(cat "$OUT/rc")
say "guest kernel: $(cat "$OUT/kernel" 2>/dev/null || echo unknown), accelerator: $ACCEL"
say "guest pytest exit code: $rc; summary: $(cat "$OUT/summary" 2>/dev/null || echo none)"
say "wall time: $((FINISHED - STARTED)) s (preparation $((PREPARED - STARTED)) s, VM $((FINISHED - PREPARED)) s)"
[ "$rc" = 5 ] && fail "pytest collected no test inside the VM (exit 5)"
[ "$rc" = 0 ] || say "FAILED: the kernel suite failed inside the VM (pytest exit $rc)"
exit "$rc"
