#!/usr/bin/env bash
# Raw boot A/B: two guest images, each with its own extra kernel
# parameters, booted in turns (AB, BA, ...) in a q35 VM shaped like a
# sandbox's (shared-memory RAM, a virtio-mem region, two PCIe root ports,
# the balloon, qboot), timing the host milliseconds from QEMU's start to
# the agent's "serving" console line. It prints each round, the medians
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
qemu=${QEMU:-/usr/bin/qemu-system-x86_64}
work=$(mktemp -d /tmp/berth-bench-rawboot-XXXXXX)
qp=""
trap '[ -n "$qp" ] && kill "$qp" 2>/dev/null; rm -rf "$work"' EXIT
boot() { # boot I: prints the ms to the agent serving
  local i=$1 log="$work/console.log" t0 ready=""
  rm -f "$log" "$work/agent.sock"
  t0=$(date +%s%N)
  "$qemu" -nodefaults -no-user-config -display none -no-reboot -machine q35,memory-backend=ram0 \
    -accel tcg,thread=multi,tb-size=128 -cpu max -smp 1 -m 256M,slots=0,maxmem=16384M -bios qboot.rom \
    -object memory-backend-memfd,id=ram0,size=256M,share=on \
    -object memory-backend-memfd,id=vm0,size=16128M,share=on -device virtio-mem-pci,id=vmem0,memdev=vm0,block-size=2M,requested-size=0 \
    -kernel "${states[$i]}/guest/vmlinuz" -initrd "${states[$i]}/guest/initramfs.img" \
    -append "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 berth.transport=virtio-serial swiotlb=4096 ${params[$i]}" \
    -serial "file:$log" -device virtio-serial-pci,id=vser0 \
    -chardev "socket,id=ca,path=$work/agent.sock,server=on,wait=off" -device virtserialport,id=agent,chardev=ca,bus=vser0.0,name=berth.agent \
    -device pcie-root-port,id=rp0,bus=pcie.0,addr=0x10,chassis=1,io-reserve=0 \
    -device pcie-root-port,id=rp1,bus=pcie.0,addr=0x11,chassis=2,io-reserve=0 \
    -device virtio-balloon-pci,id=b,free-page-reporting=on 2>/dev/null &
  qp=$!
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
