package qemu

import (
	"context"

	"github.com/berth-runtime/berth/internal/vmm"
)

// DriverName is QEMU's hypervisor.driver value.
const DriverName = "qemu"

// Driver is the QEMU implementation of vmm.Driver: it translates the
// neutral vmm.Spec into a Machine (MachineFor) and starts it. The VMs it
// returns hot-plug devices and memory (vmm.DeviceHotplugger,
// vmm.MemoryHotplugger); the driver detects KVM (vmm.AccelDetector).
type Driver struct{}

var (
	_ vmm.Driver           = Driver{}
	_ vmm.AccelDetector    = Driver{}
	_ vmm.DeviceHotplugger = driverVM{}
	_ vmm.MemoryHotplugger = driverVM{}
)

// Name implements vmm.Driver.
func (Driver) Name() string { return DriverName }

// Start implements vmm.Driver.
func (Driver) Start(ctx context.Context, spec vmm.Spec, opts vmm.StartOptions) (vmm.VM, error) {
	v, err := Start(ctx, MachineFor(spec), StartOptions{
		DieWithParent: opts.DieWithParent,
		Credential:    opts.Credential,
		Started:       opts.Started,
		Batch:         opts.Batch,
	})
	if err != nil {
		return nil, err
	}
	return driverVM{v}, nil
}

// DetectAccel implements vmm.AccelDetector with CachedAccel.
func (Driver) DetectAccel(ctx context.Context, p vmm.AccelProbe, cacheFile string) (vmm.Accel, string, error) {
	a, reason, err := CachedAccel(ctx, AccelProbe{Binary: p.Binary, Kernel: p.Kernel, Timeout: p.Timeout}, cacheFile)
	return vmm.Accel(a), reason, err
}

// MachineFor translates a neutral VM description into QEMU's. It does not
// validate: Start does (Machine.Validate), naming QEMU's fields.
func MachineFor(s vmm.Spec) Machine {
	m := Machine{
		Binary:             s.Binary,
		Type:               MachineType(s.Kind),
		Accel:              Accel(s.Accel),
		TCGTBSizeMiB:       s.TranslationCacheMiB,
		VCPUs:              s.VCPUs,
		MemoryMiB:          s.MemoryMiB,
		MaxMemoryMiB:       s.MaxMemoryMiB,
		MemorySlots:        s.MemorySlots,
		Kernel:             s.Kernel,
		Initrd:             s.Initrd,
		RootImage:          s.RootImage,
		KernelParams:       s.KernelParams,
		BIOS:               biosFor(s),
		Pflash:             s.Pflash,
		ConsoleLog:         s.ConsoleLog,
		ConsoleLogMaxBytes: s.ConsoleLogMaxBytes,
		Sandbox:            s.Seccomp,
		QMPSocket:          s.ControlSocket,
	}
	for _, p := range s.SerialPorts {
		m.SerialPorts = append(m.SerialPorts, VirtioSerialPort{ID: p.ID, Name: p.Name, SocketPath: p.SocketPath})
	}
	for _, f := range s.FileSystems {
		m.FileSystems = append(m.FileSystems, VhostUserFS{ID: f.ID, Tag: f.Tag, SocketPath: f.SocketPath})
	}
	for _, f := range s.FirmwareFiles {
		m.FwCfgFiles = append(m.FwCfgFiles, FwCfgFile{Name: f.Name, Path: f.Path})
	}
	for _, n := range s.NetDevices {
		m.NetDevices = append(m.NetDevices, NetDevice{ID: n.ID, Tap: n.Tap, MAC: n.MAC, MTU: n.MTU})
	}
	if b := s.Balloon; b != nil {
		m.Balloon = &BalloonDevice{FreePageReporting: b.FreePageReporting}
	}
	if v := s.Vsock; v != nil {
		m.Vsock = &VsockDevice{GuestCID: v.GuestCID}
	}
	if v := s.VirtioMem; v != nil {
		m.VirtioMem = &VirtioMemDevice{ID: v.ID, RegionMiB: v.RegionMiB, BlockMiB: v.BlockMiB}
	}
	for _, p := range s.PCIeRootPorts {
		m.PCIeRootPorts = append(m.PCIeRootPorts, rootPort(p))
	}
	for _, b := range s.PCIBridges {
		m.PCIBridges = append(m.PCIBridges, PCIBridge{ID: b.ID, Slot: b.Slot})
	}
	for _, sw := range s.PCIeSwitches {
		q := PCIeSwitch{RootPort: rootPort(sw.RootPort), UpstreamID: sw.UpstreamID}
		for _, d := range sw.Downstream {
			q.Downstream = append(q.Downstream, PCIeDownstreamPort{ID: d.ID, Slot: d.Slot, Chassis: d.Chassis})
		}
		m.PCIeSwitches = append(m.PCIeSwitches, q)
	}
	for _, d := range s.VFIODevices {
		m.VFIODevices = append(m.VFIODevices, vfioDevice(d))
	}
	return m
}

func rootPort(p vmm.PCIeRootPort) PCIeRootPort {
	return PCIeRootPort{ID: p.ID, Slot: p.Slot, Chassis: p.Chassis}
}

func vfioDevice(d vmm.VFIODevice) VFIODevice {
	return VFIODevice{ID: d.ID, Host: d.Host, Bus: d.Bus, Addr: d.Addr}
}

// driverVM is a *VM seen through the vmm interfaces: the neutral device
// types in, QEMU's out.
type driverVM struct{ *VM }

func (v driverVM) HotplugBlock(ctx context.Context, d vmm.BlockDevice) error {
	return v.VM.HotplugBlock(ctx, blockDevice(d))
}

func (v driverVM) UnplugBlock(ctx context.Context, d vmm.BlockDevice) error {
	return v.VM.UnplugBlock(ctx, blockDevice(d))
}

func (v driverVM) HotplugVFIO(ctx context.Context, d vmm.VFIODevice) error {
	return v.VM.HotplugVFIO(ctx, vfioDevice(d))
}

func (v driverVM) PlugDIMM(ctx context.Context, d vmm.DIMM) error {
	return v.VM.PlugDIMM(ctx, DIMM{ID: d.ID, SizeMiB: d.SizeMiB})
}

// ResizeVirtioMem, UnplugDIMM, MemoryDeviceRange, UnplugDevice, Pid, Done,
// ExitError, Shutdown and Kill are *VM's own.

func blockDevice(d vmm.BlockDevice) BlockDevice {
	return BlockDevice{ID: d.ID, Path: d.Path, ReadOnly: d.ReadOnly, Bus: d.Bus, Addr: d.Addr}
}

// biosFor maps the neutral firmware choice onto -bios: only q35 takes one
// (microvm boots QEMU's microvm qboot, virt its pflash), and SeaBIOS or
// none is QEMU's own default, which needs no flag.
func biosFor(s vmm.Spec) string {
	if MachineType(s.Kind) != Q35 {
		return ""
	}
	switch s.Firmware {
	case "", vmm.FirmwareSeaBIOS:
		return ""
	case vmm.FirmwareQboot:
		return QBootROM
	}
	return s.Firmware
}
