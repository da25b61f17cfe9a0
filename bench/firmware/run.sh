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
qemu=${QEMU:-/usr/bin/qemu-system-x86_64}
work=$(mktemp -d /tmp/berth-bench-fw-XXXXXX)
trap 'rm -rf "$work"' EXIT
boot() { # boot NAME EXTRA...: prints "NAME first_ms ready_ms"
  local name=$1 log="$work/$1.log" t0 first="" ready="" qp
  shift
  rm -f "$log"
  t0=$(date +%s%N)
  "$qemu" -nodefaults -no-user-config -display none -no-reboot -machine q35,memory-backend=ram0 \
    -accel tcg,thread=multi,tb-size=128 -cpu max -smp 1 -m 256M,slots=0,maxmem=16384M \
    -object memory-backend-memfd,id=ram0,size=256M,share=on \
    -object memory-backend-memfd,id=vm0,size=16128M,share=on -device virtio-mem-pci,id=vmem0,memdev=vm0,block-size=2M,requested-size=0 \
    -kernel "$state/guest/vmlinuz" -initrd "$state/guest/initramfs.img" \
    -append "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 berth.transport=virtio-serial swiotlb=4096" \
    -serial "file:$log" -device virtio-serial-pci,id=vser0 \
    -chardev "socket,id=ca,path=$work/$name.sock,server=on,wait=off" -device virtserialport,id=agent,chardev=ca,bus=vser0.0,name=berth.agent \
    -device pcie-root-port,id=rp0,bus=pcie.0,addr=0x10,chassis=1,io-reserve=0 \
    -device pcie-root-port,id=rp1,bus=pcie.0,addr=0x11,chassis=2,io-reserve=0 \
    -device virtio-balloon-pci,id=b,free-page-reporting=on "$@" 2>/dev/null &
  qp=$!
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
