#!/usr/bin/env bash
# Raw boot A/B: two guest images, each with its own extra kernel
# parameters, booted in turns (AB, BA, ...) under qboot from their
# initramfs in the q35 VM of bench/internal/q35vm.sh (shaped like a
# sandbox's), timing the host milliseconds from QEMU's start to the
# agent's "serving" console line. It prints each round, the medians
# and the paired ratio (median over rounds of B's time over A's).
#
# Unlike bench/boot, whose raw boot uses the command line of the berth
# binary that runs it, each image here gets the parameters given, so a
# build from before a command-line change is measured as it booted:
# Berth's base line (console, panic, loglevel=6, pty.legacy_count=0) is
# always given; PARAMS_x adds to it (for this build on q35 under TCG:
# "tsc_early_khz=<host kHz> noreplace-smp lapic_timer_hz=1000000000").
#
#   bench/rawboot/run.sh N STATE_A "PARAMS_A" STATE_B "PARAMS_B"    (root)
set -euo pipefail
n=${1:?usage: run.sh N STATE_A PARAMS_A STATE_B PARAMS_B}
states=("$2" "$4") params=("$3" "$5")
. "$(dirname "$0")/../internal/q35vm.sh"
work=$(mktemp -d /tmp/berth-bench-rawboot-XXXXXX)
qp=""
trap '[ -n "$qp" ] && kill "$qp" 2>/dev/null; rm -rf "$work"' EXIT
boot() { # boot I: prints the ms to the agent serving
  local i=$1 log="$work/console.log" t0 ready=""
  rm -f "$log" "$work/agent.sock"
  t0=$(date +%s%N)
  start_q35 "${states[$i]}" "$log" "$work/agent.sock" "${params[$i]}" -bios qboot.rom
  for _ in $(seq 1 6000); do # 30 s at most
    sleep 0.005
    grep -q 'serving over' "$log" 2>/dev/null && { ready=$(( ($(date +%s%N) - t0) / 1000000 )); break; }
  done
  kill "$qp" 2>/dev/null || true
  wait "$qp" 2>/dev/null || true
  qp=""
  [ -n "$ready" ] || { echo "${states[$i]}: the agent did not serve within 30 s" >&2; exit 1; }
  echo "$ready"
}
echo "round A_ms B_ms"
for r in $(seq 1 "$n"); do
  if [ $((r % 2)) = 0 ]; then b=$(boot 1); a=$(boot 0); else a=$(boot 0); b=$(boot 1); fi
  echo "$r $a $b"
done | tee "$work/runs"
med() { sort -n | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "A ${states[0]}: median $(awk '{ print $2 }' "$work/runs" | med) ms"
echo "B ${states[1]}: median $(awk '{ print $3 }' "$work/runs" | med) ms"
echo "paired: B = $(awk '{ printf "%.3f\n", $3 / $2 }' "$work/runs" | med) x A over $n rounds"
