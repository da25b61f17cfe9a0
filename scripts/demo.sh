#!/usr/bin/env bash
# The README's main job: a container inside a Berth VM, started through a
# real containerd (Debian's 1.6). Expects `make build guest rootfs` done.
set -euo pipefail
cd "$(dirname "$0")/.."
state_dir=${STATE_DIR:-/var/lib/berth}
rootfs=${ROOTFS:-bin/rootfs-busybox}
work=$(mktemp -d /tmp/berth-demo-XXXXXX)
cleanup() {
  scripts/containerd-private.sh stop "$work/containerd" || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== berth check"
bin/berth --state-dir "$state_dir" check

echo "== berth run (a container in a VM, no containerd)"
bin/berth --state-dir "$state_dir" run --rootfs "$rootfs" -- \
  /bin/sh -c 'echo "hello from a Berth VM: kernel $(uname -r), $(head -1 /proc/meminfo)"'

echo "== containerd (private instance) + ctr run --runtime io.containerd.berth.v2"
export BERTH_STATE_DIR=$state_dir
sock=$(scripts/containerd-private.sh start "$work/containerd" "$PWD/bin")
bin/berth image pack --rootfs "$rootfs" --ref docker.io/library/busybox:berth --out "$work/busybox.tar" -- /bin/sh
ctr -a "$sock" images import "$work/busybox.tar" >/dev/null
ctr -a "$sock" run --runtime io.containerd.berth.v2 --rm docker.io/library/busybox:berth demo \
  /bin/sh -c 'echo "hello from containerd + Berth: kernel $(uname -r), boot id $(cat /proc/sys/kernel/random/boot_id)"'
echo "host kernel: $(uname -r)"
