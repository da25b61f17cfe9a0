// Package qemu is Berth's QEMU driver: it turns a typed machine
// description into a QEMU command line, owns the QEMU process from start
// to reaping, and probes whether KVM really works. It knows nothing about
// containers, pods, OCI or cgroups; the QMP wire protocol is in package
// qmp.
package qemu

import (
	"errors"
	"fmt"
	"strings"
)

// MachineType is a QEMU x86 machine model.
type MachineType string

const (
	// Q35 is the PCIe machine; devices are virtio-pci.
	Q35 MachineType = "q35"
	// MicroVM is QEMU's minimal machine without PCI; devices are
	// virtio-mmio and the guest finds them through ACPI (see
	// machineArgs).
	MicroVM MachineType = "microvm"
)

// Accel is a QEMU accelerator.
type Accel string

const (
	KVM Accel = "kvm"
	// TCG is QEMU's emulator: slow, but works without (working) KVM.
	TCG Accel = "tcg"
)

// VirtioSerialPort is a named host-guest byte stream. QEMU listens on
// SocketPath (it creates the socket and does not wait for a client before
// starting the guest); the guest finds the port by Name in
// /sys/class/virtio-ports/*/name.
type VirtioSerialPort struct {
	ID         string // QEMU device ID, also usable over QMP
	Name       string // name the guest sees
	SocketPath string
}

// VhostUserFS is a virtio-fs share served by a virtiofsd that is already
// listening on SocketPath when QEMU starts. Its presence switches guest RAM
// to shared memory, because virtiofsd maps guest memory to do DMA.
type VhostUserFS struct {
	ID         string
	Tag        string // mount tag: mount -t virtiofs <Tag> /dir
	SocketPath string
	// QueueSize is the request virtqueue size; 0 means
	// DefaultFSQueueSize.
	QueueSize int
}

// VsockDevice is a vhost-vsock device; the host needs /dev/vhost-vsock.
type VsockDevice struct {
	GuestCID uint32
}

// FwCfgFile is one fw_cfg item from a host file. Names of items that are
// not QEMU's own must start with "opt/".
type FwCfgFile struct {
	Name string
	Path string
}

// Machine describes one VM. The zero values of the optional fields mean
// "absent".
type Machine struct {
	Binary    string // path to qemu-system-x86_64
	Type      MachineType
	Accel     Accel
	VCPUs     int
	MemoryMiB int
	// TCGTBSizeMiB is the TCG translation cache of the VM in MiB (-accel
	// tcg,tb-size=); 0 means DefaultTCGTBSizeMiB. Ignored under KVM.
	TCGTBSizeMiB int

	Kernel string
	Initrd string // optional
	// RootImage, if set, is a read-only file-system image (erofs) the
	// guest boots from as its root, on a virtio-pmem device: QEMU maps
	// the file read-only (a guest write cannot reach it, nor can
	// virtiofsd, which QEMU gives only writable RAM) and the guest mounts
	// it with DAX, reading the pages in place. Nothing is copied into
	// guest RAM, and every VM of the host shares the file's page cache.
	// Its size must be a multiple of RootImageAlignMiB. Initrd is then
	// not used (Validate refuses both).
	RootImage string
	// KernelParams is appended after Berth's base parameters (see
	// KernelCmdline), so for parameters the kernel reads last-wins (e.g.
	// loglevel=) it overrides them.
	KernelParams string

	// ConsoleLog is a file that receives the guest's serial console
	// (ttyS0); it is truncated at start. Empty discards the console.
	ConsoleLog string
	// ConsoleLogMaxBytes, when positive, caps ConsoleLog: QEMU writes
	// the console into a pipe (file descriptor ConsoleFD, passed with
	// -add-fd) and Start copies it into ConsoleLog, rotated to
	// ConsoleLog.1 at this size (internal/logcap). Zero lets QEMU write
	// the file itself, without bound.
	ConsoleLogMaxBytes int64

	// FwCfgFiles are files QEMU hands the guest through fw_cfg; the guest
	// reads them at /sys/firmware/qemu_fw_cfg/by_name/<Name>/raw (with
	// the qemu_fw_cfg module). QEMU reads each at start.
	FwCfgFiles []FwCfgFile

	// Sandbox turns on QEMU's own seccomp filter (-sandbox on) denying
	// obsolete system calls, privilege changes, spawning processes and
	// resource control (affinity, scheduling, memory policy): a device
	// emulation bug then cannot exec a shell or regain privileges.
	Sandbox bool

	// QMPSocket is where QEMU listens for QMP. Berth removes it when the
	// VM is gone.
	QMPSocket string

	SerialPorts []VirtioSerialPort
	FileSystems []VhostUserFS
	Vsock       *VsockDevice
	// Balloon, if set, adds a virtio-balloon device. Berth never inflates
	// it; it is there for free page reporting.
	Balloon *BalloonDevice
	// NetDevices are the VM's NICs (see net.go).
	NetDevices []NetDevice

	// MaxMemoryMiB, when above MemoryMiB, reserves guest physical address
	// space for memory hot-plug ("-m size,slots=,maxmem="): the ceiling
	// the guest can ever grow to (KubeVirt's maxGuest).
	MaxMemoryMiB int
	// MemorySlots is the number of DIMM slots for ACPI memory hot-plug
	// (pc-dimm); 0 when only virtio-mem is used.
	MemorySlots int
	// VirtioMem, if set, adds a virtio-mem device at boot whose plugged
	// size is changed later with SetVirtioMemRequested.
	VirtioMem *VirtioMemDevice
	// BIOS is q35's firmware (-bios): a file name QEMU looks up in its
	// data directory (QBootROM) or a path; empty is QEMU's default,
	// SeaBIOS. Only q35 takes it: microvm's default firmware is qboot
	// already and virt boots UEFI from Pflash.
	BIOS string
	// Pflash are UEFI firmware images for the "virt" machine: the
	// read-only code and a writable per-VM copy of the variable store.
	// arm64 needs them for ACPI, and so for memory hot-plug.
	Pflash []string
	// Paused starts QEMU with its vCPUs stopped (-S): the devices exist
	// and QMP works, but the guest does not run. Used to check a
	// topology against QEMU itself without booting.
	Paused bool

	// PCIe topology (q35 only): ports reserved for hot-plug, and VFIO
	// functions cold-plugged into them. See pcie.go.
	PCIeRootPorts []PCIeRootPort
	PCIBridges    []PCIBridge
	PCIeSwitches  []PCIeSwitch
	VFIODevices   []VFIODevice
}

// BalloonDevice is a virtio-balloon device.
type BalloonDevice struct {
	// FreePageReporting lets the guest report pages it freed (Linux's
	// CONFIG_PAGE_REPORTING, in 2 MiB+ chunks a few seconds after they are
	// freed); QEMU then discards them, so the host gets back memory a
	// container touched and released, without any balloon inflation.
	FreePageReporting bool
}

// VirtioMemDevice is a virtio-mem device: a region of RegionMiB that the
// guest driver plugs and unplugs in BlockMiB blocks as QEMU's
// requested-size changes.
type VirtioMemDevice struct {
	ID        string
	RegionMiB int
	// BlockMiB is the hot-plug granularity; 2 MiB (the x86 huge page
	// size) is the smallest the Linux driver accepts.
	BlockMiB int
}

// Virt is QEMU's arm64 "virt" machine (qemu-system-aarch64).
const Virt MachineType = "virt"

const (
	// DefaultFSQueueSize is the virtio-fs queue size when VhostUserFS
	// leaves it 0. QEMU's own default (128) throttles parallel file I/O;
	// 1024 is the largest QEMU accepts and what Kata uses.
	DefaultFSQueueSize = 1024
	maxFSQueueSize     = 1024

	// MinMemoryMiB is the smallest guest Berth will start. A Debian cloud
	// kernel with an initramfs does not boot in less.
	MinMemoryMiB = 128

	// maxFSTagBytes is the size of the tag field in the virtio-fs config
	// space; QEMU rejects longer tags.
	maxFSTagBytes = 36

	// maxSerialPorts: one virtio-serial controller has 31 ports by
	// default, and port 0 is reserved for a console.
	maxSerialPorts = 30

	// maxUnixPathBytes is sizeof(sun_path) minus the terminating NUL.
	// QEMU truncates or rejects longer socket paths with an error that
	// does not say why.
	maxUnixPathBytes = 107

	// maxCmdlineBytes is COMMAND_LINE_SIZE on x86; the kernel silently
	// truncates longer command lines.
	maxCmdlineBytes = 2048

	// reservedIDPrefix marks the IDs of devices and backends Berth adds on
	// its own (console, QMP monitor, RAM, controllers).
	reservedIDPrefix = "berth-"
)

// ErrInvalidMachine is wrapped by every Validate error.
var ErrInvalidMachine = errors.New("invalid machine")

// FieldError is one problem with one field of a Machine.
type FieldError struct {
	Field   string // e.g. "SerialPorts[1].SocketPath"
	Problem string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("invalid machine: %s: %s", e.Field, e.Problem)
}

func (e *FieldError) Unwrap() error { return ErrInvalidMachine }

// Validate checks m without looking at the files it names (Start does
// that), so it can run where the configuration is loaded. It reports every
// problem, each naming its field.
func (m Machine) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}

	if m.Binary == "" {
		bad("Binary", "empty; set the path to qemu-system-x86_64")
	}
	switch m.Type {
	case Q35, MicroVM, Virt:
	default:
		bad("Type", "%q is not a supported machine type (want %q, %q or %q)", m.Type, Q35, MicroVM, Virt)
	}
	if m.BIOS != "" && m.Type != Q35 {
		bad("BIOS", "only machine q35 takes a -bios firmware; got %q on %s", m.BIOS, m.Type)
	}
	m.validateMemory(bad)
	if m.RootImage != "" {
		if m.Type != Q35 {
			bad("RootImage", "virtio-pmem is a PCI device and QEMU 7.2 plugs memory devices only into q35 of Berth's machines; boot %s from the initramfs", m.Type)
		}
		if m.Initrd != "" {
			bad("Initrd", "is set with RootImage: the guest boots from one or the other")
		}
	}
	switch m.Accel {
	case KVM, TCG:
	default:
		bad("Accel", "%q is not a supported accelerator (want %q or %q)", m.Accel, KVM, TCG)
	}
	if m.VCPUs < 1 {
		bad("VCPUs", "must be at least 1, got %d", m.VCPUs)
	}
	if m.TCGTBSizeMiB < 0 {
		bad("TCGTBSizeMiB", "must not be negative, got %d", m.TCGTBSizeMiB)
	}
	if m.MemoryMiB < MinMemoryMiB {
		bad("MemoryMiB", "must be at least %d, got %d", MinMemoryMiB, m.MemoryMiB)
	}
	if m.Kernel == "" {
		bad("Kernel", "empty; a guest kernel is required")
	}
	if strings.ContainsAny(m.KernelParams, "\n\x00") {
		bad("KernelParams", "contains a newline or NUL byte")
	} else if n := len(m.KernelCmdline()); n >= maxCmdlineBytes {
		bad("KernelParams", "the kernel command line would be %d bytes; x86 kernels truncate it at %d", n, maxCmdlineBytes-1)
	}
	if m.QMPSocket == "" {
		bad("QMPSocket", "empty; Berth needs a QMP socket to control the VM")
	} else if len(m.QMPSocket) > maxUnixPathBytes {
		bad("QMPSocket", "path is %d bytes; unix socket paths are limited to %d", len(m.QMPSocket), maxUnixPathBytes)
	}

	ids := map[string]string{} // ID -> field that used it first
	checkID := func(field, id string) {
		if err := checkQEMUID(id); err != nil {
			bad(field, "%v", err)
			return
		}
		if prev, ok := ids[id]; ok {
			bad(field, "ID %q is already used by %s", id, prev)
			return
		}
		ids[id] = field
	}
	checkSocket := func(field, path string) {
		switch {
		case path == "":
			bad(field, "empty")
		case len(path) > maxUnixPathBytes:
			bad(field, "path is %d bytes; unix socket paths are limited to %d", len(path), maxUnixPathBytes)
		}
	}

	if len(m.SerialPorts) > maxSerialPorts {
		bad("SerialPorts", "%d ports; at most %d fit on the virtio-serial controller", len(m.SerialPorts), maxSerialPorts)
	}
	names := map[string]int{}
	for i, p := range m.SerialPorts {
		f := fmt.Sprintf("SerialPorts[%d]", i)
		checkID(f+".ID", p.ID)
		switch {
		case p.Name == "":
			bad(f+".Name", "empty; the guest finds the port by name")
		case strings.ContainsAny(p.Name, "/\n\x00"):
			bad(f+".Name", "%q contains '/', a newline or NUL", p.Name)
		default:
			if j, ok := names[p.Name]; ok {
				bad(f+".Name", "%q is also the name of SerialPorts[%d]", p.Name, j)
			}
			names[p.Name] = i
		}
		checkSocket(f+".SocketPath", p.SocketPath)
	}

	tags := map[string]int{}
	for i, fs := range m.FileSystems {
		f := fmt.Sprintf("FileSystems[%d]", i)
		checkID(f+".ID", fs.ID)
		switch {
		case fs.Tag == "":
			bad(f+".Tag", "empty; the guest mounts the share by tag")
		case len(fs.Tag) > maxFSTagBytes:
			bad(f+".Tag", "%q is %d bytes; virtio-fs tags are at most %d", fs.Tag, len(fs.Tag), maxFSTagBytes)
		default:
			if j, ok := tags[fs.Tag]; ok {
				bad(f+".Tag", "%q is also the tag of FileSystems[%d]", fs.Tag, j)
			}
			tags[fs.Tag] = i
		}
		checkSocket(f+".SocketPath", fs.SocketPath)
		if q := fs.QueueSize; q != 0 && (q < 0 || q > maxFSQueueSize || q&(q-1) != 0) {
			bad(f+".QueueSize", "%d is not a power of two between 1 and %d (0 means %d)", q, maxFSQueueSize, DefaultFSQueueSize)
		}
	}

	m.validatePCIe(bad, checkID)
	m.validateNet(bad, checkID)

	if m.Vsock != nil {
		// CIDs 0-2 are the hypervisor, local and host; U32_MAX is
		// VMADDR_CID_ANY.
		if cid := m.Vsock.GuestCID; cid < 3 || cid == ^uint32(0) {
			bad("Vsock.GuestCID", "%d is reserved; use a value from 3 to %d", cid, ^uint32(0)-1)
		}
	}
	return errors.Join(errs...)
}

// validateMemory checks the hot-plug fields: the ceiling, slots, and the
// virtio-mem region, which must fit under the ceiling. What each machine
// supports was measured with QEMU 7.2: virtio-mem's memory region clashes
// with microvm's device regions, and arm64 "virt" only has ACPI (and so
// DIMM hot-plug) when booted through UEFI firmware.
func (m Machine) validateMemory(bad func(field, format string, args ...any)) {
	if m.MaxMemoryMiB == 0 {
		if m.MemorySlots > 0 || m.VirtioMem != nil {
			bad("MaxMemoryMiB", "is 0, but memory hot-plug (MemorySlots or VirtioMem) needs room above MemoryMiB")
		}
		return
	}
	if m.MaxMemoryMiB < m.MemoryMiB {
		bad("MaxMemoryMiB", "%d is below MemoryMiB %d", m.MaxMemoryMiB, m.MemoryMiB)
	}
	if m.MemorySlots < 0 || m.MemorySlots > 256 {
		bad("MemorySlots", "%d is out of range 0-256", m.MemorySlots)
	}
	if v := m.VirtioMem; v != nil {
		if m.Type == MicroVM {
			bad("VirtioMem", "virtio-mem does not work on microvm (its memory region clashes with microvm's devices in QEMU 7.2); use q35")
		}
		if v.BlockMiB < 2 || v.BlockMiB&(v.BlockMiB-1) != 0 {
			bad("VirtioMem.BlockMiB", "%d is not a power of two of at least 2", v.BlockMiB)
		} else if v.RegionMiB <= 0 || v.RegionMiB%v.BlockMiB != 0 {
			bad("VirtioMem.RegionMiB", "%d is not a positive multiple of the block size %d", v.RegionMiB, v.BlockMiB)
		}
		if m.MemoryMiB+v.RegionMiB > m.MaxMemoryMiB {
			bad("VirtioMem.RegionMiB", "boot memory %d + region %d exceeds MaxMemoryMiB %d", m.MemoryMiB, v.RegionMiB, m.MaxMemoryMiB)
		}
		if err := checkQEMUID(v.ID); err != nil {
			bad("VirtioMem.ID", "%v", err)
		}
	}
	if m.Type == Virt && m.MemorySlots > 0 && len(m.Pflash) != 2 {
		bad("Pflash", "DIMM hot-plug on arm64 \"virt\" needs ACPI, which QEMU only provides with UEFI firmware: give two pflash images (code, vars); without them QEMU fails with \"memory hotplug is not enabled: missing acpi-ged device\"")
	}
}

// checkQEMUID applies QEMU's rule for IDs (id_wellformed: a letter, then
// letters, digits, '-', '.', '_'), plus Berth's reserved prefix.
func checkQEMUID(id string) error {
	if id == "" {
		return errors.New("empty ID")
	}
	for i, r := range id {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if i == 0 && !letter {
			return fmt.Errorf("ID %q must start with a letter", id)
		}
		if !letter && !(r >= '0' && r <= '9') && r != '-' && r != '.' && r != '_' {
			return fmt.Errorf("ID %q may only contain letters, digits, '-', '.' and '_'", id)
		}
	}
	if strings.HasPrefix(id, reservedIDPrefix) {
		return fmt.Errorf("ID %q uses the prefix %q, which Berth reserves for its own devices", id, reservedIDPrefix)
	}
	return nil
}
