# Sourced by bench/firmware/run.sh and bench/rawboot/run.sh: the raw q35 VM
# both boot, shaped like a sandbox's (shared-memory RAM, a 16 GiB
# virtio-mem region, two PCIe root ports, the balloon, 1 vCPU, 256 MiB)
# with only the agent's virtio-serial port, so that their figures compare.
#
#   start_q35 STATE LOG SOCK "KERNEL_PARAMS" [QEMU_ARGS...]
#
# boots STATE's guest image in the background, the console written to LOG
# and the agent's port at SOCK, with Berth's base command line plus
# KERNEL_PARAMS; QEMU_ARGS are added (e.g. -bios qboot.rom); qp is set to
# QEMU's pid.
qemu=${QEMU:-/usr/bin/qemu-system-x86_64}
start_q35() {
  local state=$1 log=$2 sock=$3 params=$4
  shift 4
  "$qemu" -nodefaults -no-user-config -display none -no-reboot -machine q35,memory-backend=ram0 \
    -accel tcg,thread=multi,tb-size=128 -cpu max -smp 1 -m 256M,slots=0,maxmem=16384M \
    -object memory-backend-memfd,id=ram0,size=256M,share=on \
    -object memory-backend-memfd,id=vm0,size=16128M,share=on -device virtio-mem-pci,id=vmem0,memdev=vm0,block-size=2M,requested-size=0 \
    -kernel "$state/guest/vmlinuz" -initrd "$state/guest/initramfs.img" \
    -append "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 berth.transport=virtio-serial swiotlb=4096 $params" \
    -serial "file:$log" -device virtio-serial-pci,id=vser0 \
    -chardev "socket,id=ca,path=$sock,server=on,wait=off" -device virtserialport,id=agent,chardev=ca,bus=vser0.0,name=berth.agent \
    -device pcie-root-port,id=rp0,bus=pcie.0,addr=0x10,chassis=1,io-reserve=0 \
    -device pcie-root-port,id=rp1,bus=pcie.0,addr=0x11,chassis=2,io-reserve=0 \
    -device virtio-balloon-pci,id=b,free-page-reporting=on "$@" 2>/dev/null &
  qp=$!
}
