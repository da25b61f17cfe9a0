// Package config owns Berth's configuration: the TOML schema, the documented
// defaults, and Load, which parses a file and validates it exactly once.
//
// Why one package and one pass: in Kata the same settings were checked in
// three places and a bad arm64 pflash list was only noticed when the VM was
// built, which surfaced to users as a pod crash loop. Here every value is
// checked when the file is loaded, and every error names the TOML key and
// the fix. Code that receives a *Config may assume it is valid.
//
// config does not probe the host. Host facts (does KVM work, which cgroup
// layout is mounted) are gathered by internal/hostcheck and passed in where
// a combination depends on them.
//
// Adding a key: add the field with its toml tag, give it a default in
// Default, validate it in Validate with an error built by keyError, document
// it in docs/configuration.md, and add a row to the validation table test.
// Load rejects keys that have no field, so a key nobody wired up cannot be
// silently ignored.
//
// Guest artefact paths: guest.kernel and guest.initrd default to "" in the
// file, meaning "under state_dir". Load fills them in (after applying
// Overrides, so --state-dir moves them) and the effective paths are what
// Marshal prints and what every caller reads. ResolvedKernel and
// ResolvedInitrd give the same answer for a Config that did not come from
// Load (for example Default() in a test).
package config

import (
	"path/filepath"
	"runtime"
	"time"
)

// DefaultPath is where Load looks when no path is given.
const DefaultPath = "/etc/berth/config.toml"

// Allowed values of the enum-like keys. They are plain strings in Config so
// the file reads naturally; Validate rejects anything not listed here.
const (
	// DriverQEMU is the only hypervisor driver (hypervisor.driver);
	// internal/vmm/drivers maps each name to its implementation.
	DriverQEMU = "qemu"

	MachineQ35     = "q35"
	MachineMicroVM = "microvm"

	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"

	VirtiofsCacheAuto   = "auto"
	VirtiofsCacheAlways = "always"
	VirtiofsCacheNone   = "none"

	SchedulingAuto   = "auto"
	SchedulingBatch  = "batch"
	SchedulingNormal = "normal"

	MachineVirt = "virt"

	MemoryHotplugAuto      = "auto"
	MemoryHotplugVirtioMem = "virtio-mem"
	MemoryHotplugDIMM      = "dimm"
	MemoryHotplugNone      = "none"
	// Placements of VFIO devices (devices.cold_plug_vfio and
	// devices.hot_plug_vfio).
	PortNone   = "no-port"
	PortRoot   = "root-port"
	PortBridge = "bridge-port"
	PortSwitch = "switch-port"

	VFIOModeVFIO        = "vfio"
	VFIOModeGuestKernel = "guest-kernel"

	KernelSourceDebian = "debian"
	KernelSourceBerth  = "berth"

	// Where the guest's own root comes from (guest.root).
	GuestRootAuto      = "auto"
	GuestRootInitramfs = "initramfs"
	GuestRootPmem      = "pmem"

	TransportAuto         = "auto"
	TransportVsock        = "vsock"
	TransportVirtioSerial = "virtio-serial"

	CgroupManagerCgroupfs = "cgroupfs"
	CgroupManagerSystemd  = "systemd"
	CgroupManagerNone     = "none"

	// Network models (network.network_model).
	NetworkModelTCFilter = "tcfilter"
	NetworkModelMacvtap  = "macvtap"
)

// Limits checked by Validate.
const (
	// MaxVCPUs is the most vCPUs a sandbox may boot with: 255 is the
	// ceiling of q35 without an interrupt-remapping IOMMU (x2APIC IDs
	// above 254 need one).
	MaxVCPUs = 255
	// MaxPCIeSlots is how many root-bus slots q35 leaves for Berth's
	// ports and bridges (0x10 to 0x1e; see internal/device).
	MaxPCIeSlots = 15
	// MaxSwitchPorts is the most downstream ports one PCIe switch has.
	MaxSwitchPorts = 32
	// MinMemoryMiB is the smallest default_memory that boots the stock
	// Debian cloud kernel with the Berth initramfs unpacked in RAM.
	MinMemoryMiB = 128
	// MinTCGTBSizeMiB and MaxTCGTBSizeMiB bound hypervisor.tcg_tb_size:
	// below 16 MiB QEMU flushes the whole cache over and over during a
	// boot; QEMU's own default is 1024 MiB and more only costs RAM.
	MinTCGTBSizeMiB = 16
	MaxTCGTBSizeMiB = 2048
	// DefaultTCGTBSizeMiB is hypervisor.tcg_tb_size's default
	// (docs/configuration.md has the measurement behind it).
	DefaultTCGTBSizeMiB = 128
)

// hypervisor.firmware's named values.
const (
	// FirmwareAuto is qboot, except for a VM with PCI bridges
	// (devices.pci_bridges), which needs SeaBIOS: see EffectiveFirmware.
	FirmwareAuto = "auto"
	// FirmwareQboot is QEMU's minimal x86 firmware (qboot.rom, in Debian's
	// qemu-system-data, a dependency of qemu-system-x86): it loads the
	// kernel from fw_cfg and QEMU's ACPI tables and jumps, without
	// SeaBIOS's device scan and option ROMs. Measured on the TCG host: the
	// first kernel line comes 0.2-0.4 s sooner (docs/benchmarks.md).
	FirmwareQboot = "qboot"
	// FirmwareSeaBIOS is QEMU's default x86 firmware.
	FirmwareSeaBIOS = "seabios"
)

// Default guest artefact file names under StateDir/guest.
const (
	guestDir        = "guest"
	guestKernelName = "vmlinuz"
	guestInitrdName = "initramfs.img"
	guestRootName   = "root.erofs"
)

// DefaultKernelSource is guest.kernel_source's default for a Go
// architecture: Berth's own kernel where the repository has its
// configuration (amd64; it boots in about half the time of the Debian
// cloud kernel under TCG, docs/benchmarks.md), the Debian kernel
// elsewhere.
func DefaultKernelSource(goarch string) string {
	if goarch == "amd64" {
		return KernelSourceBerth
	}
	return KernelSourceDebian
}

// Default returns the documented defaults (docs/configuration.md). It is a
// valid configuration: Default().Validate() returns nil. Guest.Kernel and
// Guest.Initrd are empty, meaning "under StateDir"; see ResolvedKernel.
func Default() *Config {
	return &Config{
		StateDir: "/var/lib/berth",
		RunDir:   "/run/berth",
		Hypervisor: Hypervisor{
			Driver:            DriverQEMU,
			Path:              "/usr/bin/qemu-system-x86_64",
			Machine:           MachineQ35,
			Accel:             AccelAuto,
			DefaultVCPUs:      1,
			DefaultMemoryMiB:  256,
			KernelParams:      "",
			TCGTBSizeMiB:      DefaultTCGTBSizeMiB,
			Firmware:          FirmwareAuto,
			VirtiofsdPath:     "/usr/lib/qemu/virtiofsd",
			VirtiofsCache:     VirtiofsCacheAuto,
			VirtiofsXattr:     true,
			FreePageReporting: true,
			// Generous because under TCG (no KVM) a Debian kernel
			// takes tens of seconds to reach the agent.
			BootTimeout:         Duration{60 * time.Second},
			Scheduling:          SchedulingAuto,
			DefaultMaxMemoryMiB: 16384,
			MemoryHotplug:       MemoryHotplugAuto,
			MemorySlots:         8,
			LogMaxKiB:           1024,
			QEMUSandbox:         true,
			VMMUIDBase:          DefaultVMMUIDBase,
			VMMUIDCount:         65536,
		},
		Devices: Devices{
			// Two empty root ports cost nothing measurable at boot
			// and let a container get two disks without any setting.
			PCIeRootPort:  2,
			ColdPlugVFIO:  PortNone,
			HotPlugVFIO:   PortNone,
			VFIOMode:      VFIOModeGuestKernel,
			UnplugTimeout: Duration{20 * time.Second},
		},
		Agent: Agent{
			Transport:   TransportAuto,
			DialTimeout: Duration{5 * time.Second},
		},
		Guest: Guest{
			KernelPackage: "linux-image-cloud-amd64",
			KernelSource:  DefaultKernelSource(runtime.GOARCH),
			Root:          GuestRootAuto,
		},
		Memory: defaultMemory(),
		Cgroup: Cgroup{
			Manager:           CgroupManagerCgroupfs,
			Parent:            "/berth",
			SandboxCgroupOnly: true,
			// QEMU, virtiofsd and their page tables on top of the
			// guest's RAM. Under TCG QEMU's translated-code cache alone
			// may grow to 256 MiB (tb-size, internal/qemu); a 256 MiB
			// guest touching all its memory was measured at 370 MiB
			// and rising (docs/metrics.md). With KVM 128 would do.
			OverheadMemoryMiB: 384,
		},
		Network: Network{NetworkModel: NetworkModelTCFilter},
	}
}

// Source is the file this configuration was read from, or "" when it is
// the built-in defaults (no file at the default path).
func (c *Config) Source() string { return c.source }

// ResolvedKernel is the guest kernel path: Guest.Kernel if set, otherwise
// StateDir/guest/vmlinuz. After Load it equals Guest.Kernel.
// ResolvedMemoryHotplug turns "auto" into the mechanism the machine
// supports: virtio-mem on q35, DIMMs on arm64 virt (virtio-mem needs Linux
// 5.16 there), none on microvm (QEMU 7.2's microvm cannot place
// virtio-mem's memory region).
func (c *Config) ResolvedMemoryHotplug() string {
	h := c.Hypervisor.MemoryHotplug
	if h != MemoryHotplugAuto {
		return h
	}
	switch c.Hypervisor.Machine {
	case MachineQ35:
		return MemoryHotplugVirtioMem
	case MachineVirt:
		return MemoryHotplugDIMM
	}
	return MemoryHotplugNone
}

// AAVMFPaths are Debian's arm64 UEFI images (package qemu-efi-aarch64),
// used when pflashes is empty on machine "virt".
var AAVMFPaths = []string{"/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"}

func (c *Config) ResolvedKernel() string {
	if c.Guest.Kernel != "" {
		return c.Guest.Kernel
	}
	return filepath.Join(c.StateDir, guestDir, guestKernelName)
}

// ResolvedInitrd is the initramfs path: Guest.Initrd if set, otherwise
// StateDir/guest/initramfs.img. After Load it equals Guest.Initrd.
func (c *Config) ResolvedInitrd() string {
	if c.Guest.Initrd != "" {
		return c.Guest.Initrd
	}
	return filepath.Join(c.StateDir, guestDir, guestInitrdName)
}

// ResolvedRootImage is the guest root image's path: Guest.RootImage if
// set, otherwise StateDir/guest/root.erofs. After Load it equals
// Guest.RootImage.
func (c *Config) ResolvedRootImage() string {
	if c.Guest.RootImage != "" {
		return c.Guest.RootImage
	}
	return filepath.Join(c.StateDir, guestDir, guestRootName)
}

// BootsRootImage resolves guest.root: whether the guest boots from
// Guest.RootImage rather than Guest.Initrd, given whether the root image
// exists. "auto" takes it on q35 without DIMM hot-plug when it exists:
// `berth guest build` writes it for a kernel that can mount it and
// removes it otherwise. For "pmem" it is true even if the image is
// missing, which the caller reports.
func (c *Config) BootsRootImage(imageExists bool) bool {
	switch c.Guest.Root {
	case GuestRootPmem:
		return true
	case GuestRootInitramfs:
		return false
	}
	return imageExists && c.Hypervisor.Machine == MachineQ35 && c.ResolvedMemoryHotplug() != MemoryHotplugDIMM
}

// BootSlots resolves hypervisor.boot_concurrency for a VM booting with
// the accelerator tcg (true for TCG): the number of host-wide boot slots,
// or 0 for no limit.
func (h Hypervisor) BootSlots(tcg bool) int {
	switch {
	case h.BootConcurrency > 0:
		return h.BootConcurrency
	case tcg:
		return runtime.NumCPU()
	}
	return 0
}

// Batch resolves hypervisor.scheduling for a VM running with the
// accelerator tcg (true for TCG).
func (h Hypervisor) Batch(tcg bool) bool {
	switch h.Scheduling {
	case SchedulingBatch:
		return true
	case SchedulingAuto:
		return tcg
	}
	return false
}

// LogMaxBytes is LogMaxKiB in bytes.
func (h Hypervisor) LogMaxBytes() int64 { return int64(h.LogMaxKiB) << 10 }

// Config is the whole of Berth's configuration.
type Config struct {
	// StateDir holds persistent artefacts: the guest kernel and initramfs
	// (StateDir/guest) and downloaded packages.
	StateDir string `toml:"state_dir"`
	// RunDir holds per-sandbox runtime state (sockets, shared dirs, logs);
	// it should be on a tmpfs so that a host reboot clears it.
	RunDir string `toml:"run_dir"`

	Hypervisor Hypervisor `toml:"hypervisor"`
	Devices    Devices    `toml:"devices"`
	Agent      Agent      `toml:"agent"`
	Guest      Guest      `toml:"guest"`
	Runtime    Runtime    `toml:"runtime"`
	Cgroup     Cgroup     `toml:"cgroup"`
	Debug      Debug      `toml:"debug"`
	Network    Network    `toml:"network"`
	Memory     Memory     `toml:"memory"`

	// source is the file Load read, "" for built-in defaults. It is not a
	// TOML key (unexported fields are neither decoded nor encoded).
	source string
	// host is what Load was told about the host (nil: nothing), so
	// that a configuration derived from pod annotations gets the same
	// host checks.
	host *Host
}

// Hypervisor configures the QEMU driver.
type Hypervisor struct {
	// Driver names the hypervisor driver: "qemu".
	Driver string `toml:"driver"`
	// Path is the QEMU binary.
	Path string `toml:"path"`
	// Machine is the QEMU machine type: "q35" or "microvm".
	Machine string `toml:"machine"`
	// Accel is "auto" (try KVM, fall back to TCG), "kvm" or "tcg".
	Accel string `toml:"accel"`
	// DefaultVCPUs is the number of vCPUs a sandbox boots with.
	DefaultVCPUs int `toml:"default_vcpus"`
	// DefaultMemoryMiB is the memory a sandbox boots with.
	DefaultMemoryMiB int `toml:"default_memory"`
	// KernelParams are appended to the guest kernel command line.
	KernelParams string `toml:"kernel_params"`
	// TCGTBSizeMiB is QEMU's TCG translation cache per VM, in MiB
	// (unused under KVM).
	TCGTBSizeMiB int `toml:"tcg_tb_size"`
	// Firmware is q35's firmware: "auto" (qboot unless the VM has PCI
	// bridges; see EffectiveFirmware), "qboot" (QEMU's minimal firmware),
	// "seabios" (QEMU's own default) or the absolute path of a firmware
	// image. Unused on microvm (QEMU's microvm firmware is qboot
	// already) and virt (pflashes).
	Firmware string `toml:"firmware"`
	// VirtiofsdPath is the virtiofsd binary serving container root file systems.
	VirtiofsdPath string `toml:"virtiofsd_path"`
	// VirtiofsCache is virtiofsd's cache mode: "auto", "always" or "none".
	VirtiofsCache string `toml:"virtiofs_cache"`
	// VirtiofsXattr serves extended attributes (file capabilities, user.*,
	// ACLs) through virtiofsd, as a container's file system has them under
	// runc; off saves a round trip to virtiofsd on every write(2).
	VirtiofsXattr bool `toml:"virtiofs_xattr"`
	// BootTimeout bounds the time from QEMU start until the agent answers.
	BootTimeout Duration `toml:"boot_timeout"`
	// BootConcurrency is how many VMs of the host may boot at once (QEMU
	// start until the agent answers); the others wait for a slot before
	// QEMU starts. 0 means the host's CPUs under TCG (where boots are
	// CPU-bound and slow each other down past that) and no limit under
	// KVM. See BootSlots.
	BootConcurrency int `toml:"boot_concurrency"`
	// Scheduling is how the host schedules each VM's QEMU process:
	// "batch" (Linux's SCHED_BATCH with a 20 ms slice: CPU-bound work
	// that does not preempt other tasks on wake-up), "normal" (the
	// default policy), or "auto": batch under TCG, where QEMU is pure
	// emulation and many VMs sharing few CPUs lose time to preempting
	// one another, normal under KVM, where a vCPU mostly waits for the
	// guest's interrupts and should run as soon as one comes. See Batch.
	Scheduling string `toml:"scheduling"`
	// FreePageReporting gives each VM a virtio-balloon device with free
	// page reporting, so memory the guest frees goes back to the host.
	FreePageReporting bool `toml:"free_page_reporting"`
	// DefaultMaxMemoryMiB is the ceiling a sandbox can grow to (maxGuest).
	DefaultMaxMemoryMiB int `toml:"default_maxmemory"`
	// MemoryHotplug is "auto" (virtio-mem on q35, DIMMs on virt, none on
	// microvm), "virtio-mem", "dimm" or "none".
	MemoryHotplug string `toml:"memory_hotplug"`
	// MemorySlots is the number of DIMM slots for "dimm" hot-plug.
	MemorySlots int `toml:"memory_slots"`
	// MemoryOverheadMiB is added to the sum of container limits.
	MemoryOverheadMiB int `toml:"memory_overhead"`
	// Pflashes are UEFI images [code, vars] for machine "virt" (arm64).
	Pflashes []string `toml:"pflashes"`
	// LogMaxKiB caps each log a guest can write into (console.log,
	// virtiofsd.log): rotated once to <name>.1 at this size.
	LogMaxKiB int `toml:"log_max_kib"`
	// QEMUSandbox turns on QEMU's seccomp filter (-sandbox on,...).
	QEMUSandbox bool `toml:"qemu_sandbox"`
	// RunAsRoot runs QEMU as root; by default each sandbox's QEMU runs
	// as a uid of its own from [VMMUIDBase, VMMUIDBase+VMMUIDCount).
	RunAsRoot   bool  `toml:"run_as_root"`
	VMMUIDBase  int64 `toml:"vmm_uid_base"`
	VMMUIDCount int64 `toml:"vmm_uid_count"`
}

// Devices configures the VM's PCIe topology and device plugging (q35).
type Devices struct {
	// PCIeRootPort is how many empty PCIe root ports the VM boots with
	// for hot-plug; each hot-plugged disk or VFIO function takes one.
	PCIeRootPort int `toml:"pcie_root_port"`
	// PCIeSwitchPort is how many downstream ports a PCIe switch gets (0:
	// no switch, unless cold_plug_vfio = "switch-port" needs one).
	PCIeSwitchPort int `toml:"pcie_switch_port"`
	// PCIBridges is how many PCIe-to-PCI bridges (31 slots each) the VM
	// boots with.
	PCIBridges int `toml:"pci_bridges"`
	// ColdPlugVFIO places the VFIO devices of the container that boots
	// the VM at boot: "no-port" (off), "root-port", "bridge-port" or
	// "switch-port".
	ColdPlugVFIO string `toml:"cold_plug_vfio"`
	// HotPlugVFIO places VFIO devices plugged after boot, same values.
	HotPlugVFIO string `toml:"hot_plug_vfio"`
	// VFIOMode is "guest-kernel" (the guest's own driver takes the
	// device) or "vfio" (the container gets /dev/vfio/<group>).
	VFIOMode string `toml:"vfio_mode"`
	// UnplugTimeout bounds the wait for the guest to release a device.
	UnplugTimeout Duration `toml:"unplug_timeout"`
}

// Agent configures the host-guest channel.
type Agent struct {
	// Transport is "auto" (vsock when /dev/vhost-vsock exists, else
	// virtio-serial), "vsock" or "virtio-serial".
	Transport string `toml:"transport"`
	// DialTimeout bounds one attempt to reach the agent once it is up.
	DialTimeout Duration `toml:"dial_timeout"`
}

// Guest locates the guest artefacts and says how to build them.
type Guest struct {
	// Kernel is the guest kernel image. Default: StateDir/guest/vmlinuz
	// (filled in by Load; "" in the file means the default).
	Kernel string `toml:"kernel"`
	// Initrd is the initramfs holding berth-agent. Default:
	// StateDir/guest/initramfs.img (filled in by Load).
	Initrd string `toml:"initrd"`
	// KernelPackage is the Debian package `berth guest build` downloads,
	// e.g. "linux-image-cloud-amd64" (a meta package is resolved).
	KernelPackage string `toml:"kernel_package"`
	// KernelSource is where `berth guest build` gets the kernel:
	// "debian" (the package named by KernelPackage, with its virtio
	// modules packed in the initramfs) or "berth" (Berth's own kernel,
	// built from Debian's linux-source package with guest/kernel's
	// configuration, everything built in).
	KernelSource string `toml:"kernel_source"`
	// Root is where the guest's own root file system (the agent) comes
	// from: "initramfs" (unpacked into guest RAM at every boot), "pmem"
	// (RootImage on a virtio-pmem device, mapped in place: no copy, and
	// one page cache for every VM of the host; q35 only) or "auto"
	// (pmem on q35 when `berth guest build` wrote RootImage, which it
	// does for a kernel with virtio-pmem, DAX and erofs built in).
	Root string `toml:"root"`
	// RootImage is the erofs image for Root = "pmem". Default:
	// StateDir/guest/root.erofs (filled in by Load).
	RootImage string `toml:"root_image"`
}

// Debug holds switches for debugging and for the hostile-guest tests.
// Everything here is off by default and weakens isolation when on.
type Debug struct {
	// GuestExec lets `berth debug exec SANDBOX -- CMD` run CMD as root in
	// the VM itself, outside any container (the agent refuses unless the
	// host enabled it at boot).
	GuestExec bool `toml:"guest_exec"`
}

// Runtime configures what the containerd shim accepts from pods.
type Runtime struct {
	// EnableAnnotations lists the keys pods may set through
	// io.berth.config.<key> annotations. Only keys in the annotatable
	// allow-list (see annotations.go) can be listed; default: none.
	EnableAnnotations []string `toml:"enable_annotations"`
}

// Cgroup configures the host cgroup that holds each sandbox's VMM (QEMU
// and all of its threads, and virtiofsd).
type Cgroup struct {
	// Manager is "cgroupfs" (write the cgroup file system), "systemd"
	// (ask systemd for a scope; only where systemd is PID 1, on cgroup
	// v2) or "none" (leave the VMM in the shim's cgroup, no limits).
	Manager string `toml:"manager"`
	// Parent is where sandbox cgroups are created: a cgroupfs path such
	// as "/berth" (one cgroup "<parent>/<sandbox id>" per sandbox), or a
	// systemd slice such as "berth.slice" with manager = "systemd".
	Parent string `toml:"parent"`
	// SandboxCgroupOnly: true puts the VMM in Berth's own cgroup
	// "<parent>/<id>"; false puts it in the cgroup containerd names for
	// the pod (the kubelet's pod cgroup, linux.cgroupsPath of the
	// sandbox container), so the kubelet's pod-level limits apply too.
	SandboxCgroupOnly bool `toml:"sandbox_cgroup_only"`
	// OverheadMemoryMiB is added to the VM's memory to give the cgroup's
	// memory limit.
	OverheadMemoryMiB int `toml:"overhead_memory"`
}

// Network configures how a pod's network namespace reaches the VM
// (docs/networking.md).
type Network struct {
	// NetworkModel connects each interface CNI created in the pod's
	// network namespace to a virtio-net NIC of the VM: "tcfilter" (a tap
	// per interface, tc ingress filters redirecting each direction).
	NetworkModel string `toml:"network_model"`
}

// SandboxMemoryLimitBytes is the cgroup memory limit for a VM of vmMiB:
// the VM's memory plus the configured overhead.
func (c *Config) SandboxMemoryLimitBytes(vmMiB int) int64 {
	return int64(vmMiB+c.Cgroup.OverheadMemoryMiB) << 20
}

// Duration is a time.Duration that reads TOML strings like "30s".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText prints the duration the way it is written in the file.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// EffectiveFirmware is the firmware a sandbox's VM boots: hypervisor.firmware
// with "auto" resolved. Auto is qboot, which reaches the kernel sooner, but
// SeaBIOS when the VM has PCI bridges: qboot does not number a bridge's
// secondary bus, so QEMU (which builds its ACPI tables when the firmware
// reads them) describes no hot-plug slots behind it, and a device
// hot-plugged there never appears in the guest (measured:
// TestDeviceCtrRunEveryPortKind/bridge). PCIe root and switch ports are
// native PCIe hot-plug and work under both. Auto also keeps SeaBIOS when
// VFIO is enabled: a passed-through device's BARs are then assigned by the
// firmware that is known to do it, since no host here has a device to
// try qboot with.
func (h Hypervisor) EffectiveFirmware(d Devices) string {
	if h.Firmware != FirmwareAuto {
		return h.Firmware
	}
	vfio := func(port string) bool { return port != "" && port != PortNone }
	if d.PCIBridges > 0 || vfio(d.ColdPlugVFIO) || vfio(d.HotPlugVFIO) {
		return FirmwareSeaBIOS
	}
	return FirmwareQboot
}
