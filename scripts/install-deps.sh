#!/usr/bin/env bash
# Installs the Debian packages Berth needs on the host, if missing.
# Idempotent; needs root. The guest kernel is NOT installed: `berth guest
# build` downloads and unpacks it into Berth's state directory. Berth's own
# guest kernel (guest.kernel_source = "berth", the default on x86_64) is
# compiled by `berth guest build` from Debian's linux-source package (also
# downloaded, never installed): that needs a C toolchain (gcc, libc6-dev,
# make, binutils), bc, perl, tar and xz-utils on the host. erofs-utils
# (mkfs.erofs) writes the guest root image that virtio-pmem maps.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-system-common qemu-utils busybox-static containerd runc cpio kmod iproute2 procps psmisc containernetworking-plugins iptables nftables libseccomp-dev gcc libc6-dev make binutils bc perl tar xz-utils erofs-utils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "host packages: all present"
  exit 0
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "host packages: installed ${missing[*]}"
