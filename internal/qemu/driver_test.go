package qemu

import (
	"net"
	"os"
	"reflect"
	"testing"

	"github.com/berth-runtime/berth/internal/vmm"
)

// TestMachineForTranslatesEverything: every field of a neutral spec
// reaches QEMU's machine description, so that a field added to vmm.Spec
// and forgotten here fails.
func TestMachineForTranslatesEverything(t *testing.T) {
	tap := os.NewFile(^uintptr(0), "tap")
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	spec := vmm.Spec{
		Binary: "/usr/bin/qemu-system-x86_64", Kind: vmm.Q35, Accel: vmm.KVM, TranslationCacheMiB: 64, VCPUs: 2,
		MemoryMiB: 256, MaxMemoryMiB: 4096, MemorySlots: 4,
		VirtioMem: &vmm.VirtioMem{ID: "vmem0", RegionMiB: 2048, BlockMiB: 2},
		Kernel:    "/k", Initrd: "/i", RootImage: "/r", KernelParams: "quiet", Firmware: "/fw.rom", Pflash: []string{"/c", "/v"},
		ConsoleLog: "/log", ConsoleLogMaxBytes: 1024, Seccomp: true, ControlSocket: "/qmp",
		SerialPorts:   []vmm.SerialPort{{ID: "agent", Name: "berth", SocketPath: "/a"}},
		FileSystems:   []vmm.VhostUserFS{{ID: "shared", Tag: "berth", SocketPath: "/fs"}},
		FirmwareFiles: []vmm.FirmwareFile{{Name: "opt/x", Path: "/x"}},
		NetDevices:    []vmm.NetDevice{{ID: "net0", Tap: tap, MAC: mac, MTU: 1400}},
		Balloon:       &vmm.Balloon{FreePageReporting: true},
		Vsock:         &vmm.Vsock{GuestCID: 7},
		PCIeRootPorts: []vmm.PCIeRootPort{{ID: "rp0", Slot: 0x10, Chassis: 1}},
		PCIBridges:    []vmm.PCIBridge{{ID: "br0", Slot: 0x11}},
		PCIeSwitches: []vmm.PCIeSwitch{{RootPort: vmm.PCIeRootPort{ID: "swrp", Slot: 0x12, Chassis: 2}, UpstreamID: "up",
			Downstream: []vmm.PCIeDownstreamPort{{ID: "dp0", Slot: 0, Chassis: 3}}}},
		VFIODevices: []vmm.VFIODevice{{ID: "vfio0", Host: "0000:01:00.0", Bus: "rp0", Addr: 0}},
	}
	want := Machine{
		Binary: "/usr/bin/qemu-system-x86_64", Type: Q35, Accel: KVM, TCGTBSizeMiB: 64, VCPUs: 2,
		MemoryMiB: 256, MaxMemoryMiB: 4096, MemorySlots: 4,
		VirtioMem: &VirtioMemDevice{ID: "vmem0", RegionMiB: 2048, BlockMiB: 2},
		Kernel:    "/k", Initrd: "/i", RootImage: "/r", KernelParams: "quiet", BIOS: "/fw.rom", Pflash: []string{"/c", "/v"},
		ConsoleLog: "/log", ConsoleLogMaxBytes: 1024, Sandbox: true, QMPSocket: "/qmp",
		SerialPorts:   []VirtioSerialPort{{ID: "agent", Name: "berth", SocketPath: "/a"}},
		FileSystems:   []VhostUserFS{{ID: "shared", Tag: "berth", SocketPath: "/fs"}},
		FwCfgFiles:    []FwCfgFile{{Name: "opt/x", Path: "/x"}},
		NetDevices:    []NetDevice{{ID: "net0", Tap: tap, MAC: mac, MTU: 1400}},
		Balloon:       &BalloonDevice{FreePageReporting: true},
		Vsock:         &VsockDevice{GuestCID: 7},
		PCIeRootPorts: []PCIeRootPort{{ID: "rp0", Slot: 0x10, Chassis: 1}},
		PCIBridges:    []PCIBridge{{ID: "br0", Slot: 0x11}},
		PCIeSwitches: []PCIeSwitch{{RootPort: PCIeRootPort{ID: "swrp", Slot: 0x12, Chassis: 2}, UpstreamID: "up",
			Downstream: []PCIeDownstreamPort{{ID: "dp0", Slot: 0, Chassis: 3}}}},
		VFIODevices: []VFIODevice{{ID: "vfio0", Host: "0000:01:00.0", Bus: "rp0", Addr: 0}},
	}
	if got := MachineFor(spec); !reflect.DeepEqual(got, want) {
		t.Errorf("MachineFor:\n got %+v\nwant %+v", got, want)
	}
	// Every field of the spec is set above: a new one must be added here
	// and to MachineFor.
	v := reflect.ValueOf(spec)
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).IsZero() {
			t.Errorf("vmm.Spec.%s is not set in this test", v.Type().Field(i).Name)
		}
	}
	// The zero spec is the zero machine: no device appears from nowhere.
	if got := MachineFor(vmm.Spec{}); !reflect.DeepEqual(got, Machine{}) {
		t.Errorf("MachineFor(zero spec) = %+v", got)
	}
}

// TestFirmwareOnlyOnQ35: "qboot" becomes QEMU's qboot.rom on q35, looked
// up in QEMU's data directory; "seabios" and no choice leave QEMU's
// default; microvm and virt never get -bios (their firmware is their
// own), whatever the configuration says.
func TestFirmwareOnlyOnQ35(t *testing.T) {
	for _, c := range []struct {
		kind     vmm.MachineKind
		firmware string
		want     string
	}{
		{vmm.Q35, vmm.FirmwareQboot, QBootROM},
		{vmm.Q35, vmm.FirmwareSeaBIOS, ""},
		{vmm.Q35, "", ""},
		{vmm.Q35, "/opt/fw.rom", "/opt/fw.rom"},
		{vmm.MicroVM, vmm.FirmwareQboot, ""},
		{vmm.Virt, vmm.FirmwareQboot, ""},
	} {
		if got := MachineFor(vmm.Spec{Kind: c.kind, Firmware: c.firmware}).BIOS; got != c.want {
			t.Errorf("%s, firmware %q: BIOS %q, want %q", c.kind, c.firmware, got, c.want)
		}
	}
}
