package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/device"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/vmm"
)

func baseQ35() vmm.Spec {
	return vmm.Spec{
		Binary: "/usr/bin/qemu-system-x86_64", Kind: vmm.Q35, Accel: vmm.TCG, VCPUs: 1, MemoryMiB: 256,
		Kernel: "/k/vmlinuz", ControlSocket: "/run/berth/s/qmp.sock",
	}
}

// TestPlannedTopologyIsAValidMachine: for every cold/hot-plug setting, the
// topology internal/device plans becomes a machine the QEMU driver
// accepts (the test alone links the driver, to check the translation), with every cold-plugged function on QEMU's command line in the
// port planned for it.
func TestPlannedTopologyIsAValidMachine(t *testing.T) {
	groups := []device.VFIOGroup{
		{Group: "12", ContainerPath: "/dev/vfio/12", Functions: []device.PCIAddress{"0000:01:00.0", "0000:01:00.1"}},
		{Group: "13", ContainerPath: "/dev/vfio/13", Functions: []device.PCIAddress{"0000:02:00.0"}},
	}
	ports := []string{config.PortNone, config.PortRoot, config.PortBridge, config.PortSwitch}
	for _, cold := range ports {
		for _, hot := range ports {
			cfg := config.Default()
			cfg.Devices.ColdPlugVFIO, cfg.Devices.HotPlugVFIO = cold, hot
			cfg.Devices.PCIeRootPort, cfg.Devices.PCIBridges, cfg.Devices.PCIeSwitchPort = 2, 1, 2
			if err := cfg.Validate(); err != nil {
				t.Fatalf("cold=%s hot=%s: %v", cold, hot, err)
			}
			m := baseQ35()
			topo, coldDevs, err := planTopology(cfg, &m, groups)
			if err != nil {
				t.Fatalf("cold=%s hot=%s: %v", cold, hot, err)
			}
			args, err := qemu.MachineFor(m).Args()
			if err != nil {
				t.Fatalf("cold=%s hot=%s: the planned machine is invalid: %v", cold, hot, err)
			}
			line := strings.Join(args, " ")
			wantCold := 0
			if cold != config.PortNone {
				wantCold = 3
			}
			if len(coldDevs.VFIO) != wantCold || len(m.VFIODevices) != wantCold {
				t.Fatalf("cold=%s: %d cold devices, %d on the command line, want %d", cold, len(coldDevs.VFIO), len(m.VFIODevices), wantCold)
			}
			for _, a := range coldDevs.VFIO {
				want := fmt.Sprintf("vfio-pci,id=%s,host=%s,bus=%s,addr=0x%02x", a.ID, a.Function, a.Port.Bus, a.Port.Addr)
				if !strings.Contains(line, want) {
					t.Errorf("cold=%s: %q not in %s", cold, want, line)
				}
			}
			if topo.HotplugPorts() == 0 {
				t.Errorf("cold=%s hot=%s: no hot-plug port", cold, hot)
			}
		}
	}
	// Not q35: no ports, and cold-plug is refused with a classified error.
	cfg := config.Default()
	m := baseQ35()
	m.Kind = vmm.MicroVM
	if _, _, err := planTopology(cfg, &m, groups); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("cold-plug on microvm: %v", err)
	}
}

// recordingHotplugger is a vmm.DeviceHotplugger that records the devices.
type recordingHotplugger struct{ calls []string }

func (r *recordingHotplugger) HotplugBlock(_ context.Context, d vmm.BlockDevice) error {
	r.calls = append(r.calls, fmt.Sprintf("plug %s %s bus=%s addr=%d ro=%v", d.ID, d.Path, d.Bus, d.Addr, d.ReadOnly))
	return nil
}
func (r *recordingHotplugger) UnplugBlock(_ context.Context, d vmm.BlockDevice) error {
	r.calls = append(r.calls, "unplug "+d.ID)
	return nil
}
func (r *recordingHotplugger) HotplugVFIO(_ context.Context, d vmm.VFIODevice) error {
	r.calls = append(r.calls, fmt.Sprintf("vfio %s %s bus=%s", d.ID, d.Host, d.Bus))
	return nil
}
func (r *recordingHotplugger) UnplugDevice(_ context.Context, id string) error {
	r.calls = append(r.calls, "unplug "+id)
	return nil
}

// TestVMPluggerTranslates: the adapter hands the driver the port the device
// package chose, and bounds unplugs by devices.unplug_timeout.
func TestVMPluggerTranslates(t *testing.T) {
	cfg := config.Default()
	rec := &recordingHotplugger{}
	q := vmPlugger{hp: rec, driver: "fake", cfg: cfg}
	topo, cold, err := device.Plan(deviceConfig(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := device.NewManager(deviceConfig(cfg), topo, cold, q, q)
	req := device.Request{Blocks: []device.Block{{HostPath: "/dev/loop3", HostMajor: 7, HostMinor: 3, ContainerPath: "/dev/xda", MountIndex: -1, ReadOnly: true}}}
	if _, err := m.Attach(context.Background(), "c", req); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	want := "plug blk0 /dev/loop3 bus=rp0 addr=0 ro=true; unplug blk0"
	if got := strings.Join(rec.calls, "; "); got != want {
		t.Errorf("calls %q, want %q", got, want)
	}
}

// TestVMPluggerWithoutHotplug: a driver that cannot hot-plug makes the
// container that asks for a device fail with NotImplemented naming the
// driver, instead of pretending the disk is there.
func TestVMPluggerWithoutHotplug(t *testing.T) {
	cfg := config.Default()
	q := vmPlugger{driver: "fake", cfg: cfg}
	topo, cold, err := device.Plan(deviceConfig(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := device.NewManager(deviceConfig(cfg), topo, cold, q, q)
	req := device.Request{Blocks: []device.Block{{HostPath: "/dev/loop3", HostMajor: 7, HostMinor: 3, ContainerPath: "/dev/xda", MountIndex: -1}}}
	_, err = m.Attach(context.Background(), "c", req)
	if !errors.Is(err, errdefs.ErrNotImplemented) || !strings.Contains(err.Error(), `hypervisor.driver "fake"`) {
		t.Errorf("attach without hot-plug: %v, want NotImplemented naming the driver", err)
	}
}
