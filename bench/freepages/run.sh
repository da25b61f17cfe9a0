#!/usr/bin/env bash
# Measures whether the host gets back memory a container touched and freed
# (hypervisor.free_page_reporting): QEMU's RSS, sampled every second, while
# a container in a 1 GiB VM idles, touches ~500 MiB (busybox awk building a
# 320 MB string, which it copies once), exits that process, and idles
# again. Prints the timeline and idle / peak / after figures.
#
# Usage (root, guest image built): bench/freepages/run.sh [berth --config FILE] [rootfs]
set -euo pipefail
BERTH=${BERTH:-bin/berth}
CONFIG=${CONFIG:-}
ROOTFS=${ROOTFS:-bin/rootfs-busybox}
name=fpr-$$
args=()
[ -n "$CONFIG" ] && args+=(--config "$CONFIG")
"$BERTH" "${args[@]}" run --name "$name" --memory 1G --rootfs "$ROOTFS" -- sh -c \
  'sleep 8; echo touch; awk "BEGIN{s=sprintf(\"%320000000s\",\"\"); print length(s)}"; echo freed; sleep 20' &
run=$!
pid=""
for _ in $(seq 100); do
  pid=$(pgrep -f "qemu-system.*sandboxes/$name/" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.2
done
[ -n "$pid" ] || { echo "no QEMU for $name" >&2; wait $run; exit 1; }
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS/{print int($2/1024)}' /proc/$pid/status 2>/dev/null || true)
  [ -n "$rss" ] && echo "t=$(( $(date +%s) - start ))s qemu_rss_mib=$rss"
  sleep 1
done
wait $run
