#!/usr/bin/env bash
# A/B latency of two Berth builds, measured in one run: `berth run --rootfs
# ROOTFS -- /bin/true` and `ctr run --rm --rootfs ROOTFS ... /bin/true`
# through a private containerd per build (scripts/containerd-private.sh,
# each with its own shim on PATH and its own state directory). Every round
# runs both builds, in alternating order (AB, BA, ...), so that other VMs
# on the host weigh on both alike; it prints each run, then the median,
# min and max per build and the median's delta of B over A, and the
# paired delta: the median over rounds of B's time over A's in the same
# round. On a shared host whose speed drifts during the run (this one is
# itself a VM) the paired delta is the sharper figure: both builds of a
# round ran within seconds of each other.
#
#   bench/ab/run.sh N ROOTFS NAME_A BIN_A STATE_A NAME_B BIN_B STATE_B
#
# BIN_x holds berth and containerd-shim-berth-v2; STATE_x holds that
# build's guest image (make guest STATE_DIR=...). Root.
set -euo pipefail
n=${1:?usage: run.sh N ROOTFS NAME_A BIN_A STATE_A NAME_B BIN_B STATE_B}
rootfs=$(readlink -f "$2")
names=("$3" "$6") bins=("$(readlink -f "$4")" "$(readlink -f "$7")") states=("$5" "$8")
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/berth-bench-ab-XXXXXX)
chmod 711 "$work" # QEMU's unprivileged uid must reach run_dir below it
socks=()
cleanup() {
  for i in 0 1; do "$here/scripts/containerd-private.sh" stop "$work/ctrd$i" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for i in 0 1; do
  mkdir -m 711 "$work/run$i"
  printf 'state_dir = "%s"\nrun_dir = "%s"\n' "${states[$i]}" "$work/run$i" > "$work/config$i.toml"
  socks[$i]=$(BERTH_CONFIG="$work/config$i.toml" BERTH_STATE_DIR="${states[$i]}" \
    "$here/scripts/containerd-private.sh" start "$work/ctrd$i" "${bins[$i]}")
done
now() { date +%s%N; }
measure() { # measure I ROUND: one berth run and one ctr run of build I (round 0 warms up, unrecorded)
  local i=$1 r=$2 t0 t1 t2 row
  t0=$(now)
  "${bins[$i]}/berth" --config "$work/config$i.toml" run --rootfs "$rootfs" -- /bin/true
  t1=$(now)
  ctr -a "${socks[$i]}" run --rm --runtime io.containerd.berth.v2 --rootfs "$rootfs" "ab-$i-$r" /bin/true
  t2=$(now)
  row="${names[$i]} $(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 ))"
  if [ "$r" != 0 ]; then echo "$row" | tee -a "$work/runs"; fi
}
echo "build berth_run_ms ctr_run_ms"
for r in $(seq 0 "$n"); do
  if [ $((r % 2)) = 0 ]; then order="0 1"; else order="1 0"; fi
  for i in $order; do
    measure "$i" "$r"
  done
done
# stats: median, min, max and count of the numbers on stdin, one a line
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "%.17g %.17g %.17g %d\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR], NR }'; }
# stat NAME C: median, min, max of column C for build NAME, in whole ms
stat() { awk -v b="$1" -v c="$2" '$1 == b { print $c }' "$work/runs" | stats | awk '{ printf "%d %d %d\n", $1, $2, $3 }'; }
echo
printf '%-26s %-28s %-28s\n' "" "${names[0]} median (min-max)" "${names[1]} median (min-max)"
for c in 2 3; do
  label="berth run /bin/true"; [ $c = 3 ] && label="ctr run --rm /bin/true"
  read -r ma lo_a hi_a < <(stat "${names[0]}" $c)
  read -r mb lo_b hi_b < <(stat "${names[1]}" $c)
  printf '%-26s %-28s %-28s delta %+.1f%%\n' "$label" "$ma ms ($lo_a-$hi_a)" "$mb ms ($lo_b-$hi_b)" \
    "$(awk -v a="$ma" -v b="$mb" 'BEGIN { print (b - a) * 100 / a }')"
done
# paired C: the median of B/A over rounds of column C, as a delta
paired() { awk -v a="${names[0]}" -v b="${names[1]}" -v c="$1" '{ v[$1] = $c } NR % 2 == 0 { print v[b] / v[a] }' "$work/runs" | stats |
  awk '{ printf "%+.1f%% over %d rounds", ($1 - 1) * 100, $4 }'; }
echo
echo "paired delta (median of ${names[1]}/${names[0]} within a round): berth run $(paired 2), ctr run $(paired 3)"
