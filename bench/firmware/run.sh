#!/usr/bin/env bash
# Firmware on q35: qboot against SeaBIOS, measured in one run. Each round
# boots the guest image of STATE_DIR twice, once per firmware, in
# alternating order, in a VM shaped like a sandbox's (shared-memory RAM, a
# virtio-mem region, two PCIe root ports, the balloon), and takes the host
# time from QEMU's start to the kernel's first console line and to the
# agent's "serving" line. It prints each boot, then the medians and the
# paired ratio (the median over rounds of qboot's time over SeaBIOS's).
#
#   bench/firmware/run.sh [N] [STATE_DIR]     (root; N rounds, default 8)
set -euo pipefail
n=${1:-8}
state=${2:-/var/lib/berth}
. "$(dirname "$0")/../internal/q35vm.sh"
work=$(mktemp -d /tmp/berth-bench-fw-XXXXXX)
trap 'rm -rf "$work"' EXIT
boot() { # boot NAME EXTRA...: prints "NAME first_ms ready_ms"
  local name=$1 log="$work/$1.log" t0 first="" ready="" qp
  shift
  rm -f "$log"
  t0=$(date +%s%N)
  start_q35 "$state" "$log" "$work/$name.sock" "" "$@"
  for _ in $(seq 1 3000); do # 30 s at most
    sleep 0.01
    [ -z "$first" ] && grep -q 'Linux version' "$log" 2>/dev/null && first=$(( ($(date +%s%N) - t0) / 1000000 ))
    grep -q 'serving over' "$log" 2>/dev/null && { ready=$(( ($(date +%s%N) - t0) / 1000000 )); break; }
  done
  kill "$qp" 2>/dev/null || true
  wait "$qp" 2>/dev/null || true
  [ -n "$ready" ] || { echo "$name: the agent did not serve within 30 s (console: $log)" >&2; exit 1; }
  echo "$name $first $ready"
}
echo "firmware first_line_ms agent_ready_ms"
for r in $(seq 1 "$n"); do
  if [ $((r % 2)) = 0 ]; then
    boot seabios; boot qboot -bios qboot.rom
  else
    boot qboot -bios qboot.rom; boot seabios
  fi
done | tee "$work/runs"
# stats: median and count of the numbers on stdin, one a line
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "%.17g %d\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, NR }'; }
med() { stats | awk '{ printf "%d", $1 }'; }
echo
for fw in qboot seabios; do
  printf '%-8s first line %5d ms   agent ready %5d ms (medians)\n' "$fw" \
    "$(awk -v f=$fw '$1 == f { print $2 }' "$work/runs" | med)" "$(awk -v f=$fw '$1 == f { print $3 }' "$work/runs" | med)"
done
paste - - < "$work/runs" | awk '{ print ($1 == "qboot") ? $3 / $6 : $6 / $3 }' | stats |
  awk '{ printf "paired: qboot agent ready = %.3f x SeaBIOS over %d rounds\n", $1, $2 }'
