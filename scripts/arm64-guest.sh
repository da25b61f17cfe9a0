#!/usr/bin/env bash
# Prepares what Berth's arm64 tests need on an x86_64 Debian 12 host:
#   - qemu-system-arm (qemu-system-aarch64) and qemu-efi-aarch64 (the AAVMF
#     UEFI images in /usr/share/AAVMF), installed if missing;
#   - Debian's arm64 cloud kernel, downloaded and unpacked into DIR without
#     installing it (the arm64 architecture is added to dpkg only so that
#     apt can resolve and download arm64 packages).
# Idempotent: a second run with the same DIR downloads nothing. The last
# line of stdout is the path of the unpacked vmlinuz; everything else goes
# to stderr. Needs root. Usage: arm64-guest.sh DIR
set -euo pipefail
dir=${1:?usage: arm64-guest.sh DIR}
log() { echo "arm64-guest: $*" >&2; }
# Exit status 3 means "apt cannot provide a package" (no network, no
# mirror, package gone); the e2e tests skip on it and fail on anything else.
apt_fail() { log "$*"; exit 3; }
export DEBIAN_FRONTEND=noninteractive

updated=
apt_update() {
  [ -n "$updated" ] && return 0
  log "apt-get update"
  apt-get update -qq >&2 || apt_fail "apt-get update failed"
  updated=1
}

# Host packages.
missing=()
for p in qemu-system-arm qemu-efi-aarch64; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    apt_fail "apt-get install ${missing[*]} failed"
fi

# arm64 package lists. The Packages file for arm64 appears only after an
# update that follows adding the architecture.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "dpkg --add-architecture arm64"
  dpkg --add-architecture arm64
  updated=
fi
if ! compgen -G '/var/lib/apt/lists/*_binary-arm64_Packages*' >/dev/null; then
  updated=
  apt_update
fi

# linux-image-cloud-arm64 is a metapackage; the kernel is in the concrete
# linux-image-<version>-cloud-arm64 it depends on.
resolve() {
  apt-cache depends linux-image-cloud-arm64:arm64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ :]*-cloud-arm64\).*/\1/p' | head -n1
}
pkg=$(resolve)
if [ -z "$pkg" ]; then
  apt_update
  pkg=$(resolve)
fi
[ -n "$pkg" ] || apt_fail "apt cannot resolve linux-image-cloud-arm64:arm64"
version=${pkg#linux-image-}
vmlinuz="$dir/boot/vmlinuz-$version"

if [ ! -s "$vmlinuz" ] || [ ! -s "$dir/boot/config-$version" ]; then
  mkdir -p "$dir"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  log "downloading $pkg:arm64"
  # apt-get download fetches as the _apt user into the working
  # directory; let it write there (otherwise it falls back to root with
  # a warning).
  if id -u _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
  (cd "$tmp" && apt-get download -qq "$pkg:arm64" >&2) || apt_fail "apt-get download $pkg:arm64 failed"
  deb=$(ls "$tmp"/*.deb)
  log "unpacking $(basename "$deb") into $dir"
  dpkg-deb -x "$deb" "$dir"
fi
[ -s "$vmlinuz" ] || { log "$vmlinuz missing after unpacking $pkg"; exit 1; }
echo "$vmlinuz"
