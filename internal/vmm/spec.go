package vmm

import (
	"net"
	"os"
)

// MachineKind is the kind of virtual machine, named as hypervisor.machine
// names it.
type MachineKind string

const (
	// Q35 is an x86 PCIe machine: devices are PCI, hot-plug goes into
	// the PCIe ports of the Spec's topology.
	Q35 MachineKind = "q35"
	// MicroVM is a minimal x86 machine without PCI (virtio-mmio).
	MicroVM MachineKind = "microvm"
	// Virt is the arm64 machine.
	Virt MachineKind = "virt"
)

// Named x86 firmwares of Spec.Firmware, as hypervisor.firmware names them
// (config resolves "auto" before the spec is built).
const (
	FirmwareQboot   = "qboot"
	FirmwareSeaBIOS = "seabios"
)

// HasPCIe reports whether the machine has PCIe ports for hot-plug.
func (k MachineKind) HasPCIe() bool { return k == Q35 }

// Accel is the CPU accelerator.
type Accel string

const (
	KVM Accel = "kvm"
	// TCG is software emulation: slow, but works without KVM.
	TCG Accel = "tcg"
)

// Spec describes one VM. Zero values of optional fields mean "absent".
type Spec struct {
	// Binary is the hypervisor executable (hypervisor.path).
	Binary string
	Kind   MachineKind
	Accel  Accel
	// TranslationCacheMiB is the emulator's translation cache when Accel
	// is TCG (hypervisor.tcg_tb_size); 0 is the driver's default.
	TranslationCacheMiB int
	VCPUs               int
	// MemoryMiB is the boot memory.
	MemoryMiB int
	// MaxMemoryMiB, when above MemoryMiB, reserves room for memory
	// hot-plug: the ceiling the guest can grow to.
	MaxMemoryMiB int
	// MemorySlots is the number of DIMM slots; 0 when only virtio-mem is
	// used.
	MemorySlots int
	// VirtioMem, if set, is a virtio-mem region present at boot.
	VirtioMem *VirtioMem

	Kernel string
	Initrd string
	// RootImage, if set, is a read-only erofs image the guest boots from
	// as its root (on a virtio-pmem device, mapped in place) instead of
	// an initramfs; Initrd is then empty. Only Q35.
	RootImage string
	// KernelParams are appended after the driver's base parameters, so
	// that last-wins parameters override them.
	KernelParams string
	// Firmware is the x86 PC firmware: FirmwareQboot, FirmwareSeaBIOS or
	// an image path; empty is the driver's default
	// (hypervisor.firmware).
	Firmware string
	// Pflash are UEFI images: read-only code and a per-VM variable store.
	Pflash []string

	// ConsoleLog receives the guest's serial console; empty discards it.
	ConsoleLog string
	// ConsoleLogMaxBytes, when positive, caps ConsoleLog (rotated once).
	ConsoleLogMaxBytes int64
	// Seccomp confines the hypervisor with its own system call filter.
	Seccomp bool
	// ControlSocket is where the driver's control channel listens (QMP
	// for QEMU); the driver removes it when the VM is gone.
	ControlSocket string

	SerialPorts []SerialPort
	FileSystems []VhostUserFS
	// FirmwareFiles are host files the guest reads through the firmware
	// configuration interface (fw_cfg on QEMU).
	FirmwareFiles []FirmwareFile
	NetDevices    []NetDevice
	Balloon       *Balloon
	Vsock         *Vsock

	// PCIe topology (Q35 only): ports reserved for hot-plug, and VFIO
	// functions cold-plugged into them.
	PCIeRootPorts []PCIeRootPort
	PCIBridges    []PCIBridge
	PCIeSwitches  []PCIeSwitch
	VFIODevices   []VFIODevice
}

// SerialPort is a named host-guest byte stream; the hypervisor listens on
// SocketPath, the guest finds the port by Name.
type SerialPort struct {
	ID         string
	Name       string
	SocketPath string
}

// VhostUserFS is a virtio-fs share served by a vhost-user daemon already
// listening on SocketPath.
type VhostUserFS struct {
	ID         string
	Tag        string // the guest mounts the share by tag
	SocketPath string
}

// FirmwareFile is one named item the guest reads from firmware.
type FirmwareFile struct {
	Name string
	Path string
}

// NetDevice is a virtio-net NIC on a tap the caller opened; the driver
// passes the descriptor to the hypervisor, the caller keeps ownership.
type NetDevice struct {
	ID  string
	Tap *os.File
	MAC net.HardwareAddr
	// MTU is offered to the guest driver; 0 leaves its default.
	MTU int
}

// Balloon is a virtio-balloon device, never inflated: it is there for free
// page reporting.
type Balloon struct {
	FreePageReporting bool
}

// Vsock is a vhost-vsock device.
type Vsock struct {
	GuestCID uint32
}

// VirtioMem is a virtio-mem region of RegionMiB, plugged in BlockMiB
// blocks.
type VirtioMem struct {
	ID        string
	RegionMiB int
	BlockMiB  int
}

// DIMM is one hot-plugged memory module.
type DIMM struct {
	ID      string
	SizeMiB int
}

// PCIeRootPort is a root port at Slot of the root bus; Chassis is unique
// among the machine's ports.
type PCIeRootPort struct {
	ID      string
	Slot    int
	Chassis int
}

// PCIBridge is a PCIe-to-PCI bridge at Slot of the root bus.
type PCIBridge struct {
	ID   string
	Slot int
}

// PCIeSwitch is a root port holding a switch's upstream port and its
// downstream ports.
type PCIeSwitch struct {
	RootPort   PCIeRootPort
	UpstreamID string
	Downstream []PCIeDownstreamPort
}

// PCIeDownstreamPort is one downstream port of a switch.
type PCIeDownstreamPort struct {
	ID      string
	Slot    int
	Chassis int
}

// VFIODevice is a host PCI function passed through, at Addr on Bus (a
// port's or bridge's ID).
type VFIODevice struct {
	ID   string
	Host string // host address, e.g. 0000:01:00.0
	Bus  string
	Addr int
}

// BlockDevice is a virtio-blk disk at Addr on Bus; Path is a host block
// device or a regular file.
type BlockDevice struct {
	ID       string
	Path     string
	ReadOnly bool
	Bus      string
	Addr     int
}
