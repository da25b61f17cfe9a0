package sandbox

import (
	"os"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/memory"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/vmm"
)

// TestConfigToVMSpec: what the configuration and the create's options
// become in the neutral VM description the driver gets, and that the QEMU
// driver accepts each result (only the test links it).
func TestConfigToVMSpec(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(c *config.Config)
		opts  Options
		check func(t *testing.T, m vmm.Spec, l memory.Limits)
		err   error
	}{
		{name: "defaults", check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if m.Kind != vmm.Q35 || m.VCPUs != 1 || m.MemoryMiB != 256 || m.Accel != vmm.TCG {
				t.Errorf("kind %s, %d vCPUs, %d MiB, accel %s", m.Kind, m.VCPUs, m.MemoryMiB, m.Accel)
			}
			if l.Mechanism != memory.VirtioMem || m.MaxMemoryMiB != 16384 || m.VirtioMem == nil || m.VirtioMem.RegionMiB != 16384-256 || m.MemorySlots != 0 {
				t.Errorf("memory: %+v, max %d, virtio-mem %+v, slots %d", l, m.MaxMemoryMiB, m.VirtioMem, m.MemorySlots)
			}
			if m.Balloon == nil || !m.Balloon.FreePageReporting {
				t.Errorf("balloon %+v, want free page reporting", m.Balloon)
			}
			if !strings.Contains(m.KernelParams, "swiotlb=4096") || !strings.Contains(m.KernelParams, "berth.transport=virtio-serial") {
				t.Errorf("kernel params %q", m.KernelParams)
			}
			if len(m.SerialPorts) != 1 || len(m.FileSystems) != 1 || len(m.FirmwareFiles) != 1 || m.Vsock != nil {
				t.Errorf("devices: serial %v, fs %v, firmware %v, vsock %v", m.SerialPorts, m.FileSystems, m.FirmwareFiles, m.Vsock)
			}
			if len(m.PCIeRootPorts) == 0 || !m.Seccomp || m.ControlSocket == "" {
				t.Errorf("root ports %v, seccomp %v, control socket %q", m.PCIeRootPorts, m.Seccomp, m.ControlSocket)
			}
			// config's firmware names are the driver seam's: auto is qboot.
			if m.Firmware != vmm.FirmwareQboot {
				t.Errorf("firmware %q, want %q", m.Firmware, vmm.FirmwareQboot)
			}
		}},
		{name: "pci bridges boot SeaBIOS", edit: func(c *config.Config) { c.Devices.PCIBridges = 1 }, check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if m.Firmware != vmm.FirmwareSeaBIOS || len(m.PCIBridges) != 1 {
				t.Errorf("firmware %q with bridges %v, want %q", m.Firmware, m.PCIBridges, vmm.FirmwareSeaBIOS)
			}
		}},
		{name: "options override", opts: Options{VCPUs: 2, MemoryMiB: 512, Accel: vmm.KVM}, check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if m.VCPUs != 2 || m.MemoryMiB != 512 || m.Accel != vmm.KVM || l.BootMiB != 512 || m.VirtioMem.RegionMiB != 16384-512 {
				t.Errorf("%d vCPUs, %d MiB, accel %s, limits %+v, virtio-mem %+v", m.VCPUs, m.MemoryMiB, m.Accel, l, m.VirtioMem)
			}
		}},
		{name: "dimm", edit: func(c *config.Config) { c.Hypervisor.MemoryHotplug = config.MemoryHotplugDIMM }, check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if l.Mechanism != memory.DIMM || m.MemorySlots != 8 || l.Slots != 8 || m.VirtioMem != nil {
				t.Errorf("limits %+v, slots %d, virtio-mem %+v", l, m.MemorySlots, m.VirtioMem)
			}
		}},
		{name: "microvm", edit: func(c *config.Config) { c.Hypervisor.Machine = config.MachineMicroVM }, check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if m.Kind != vmm.MicroVM || l.Mechanism != memory.None || m.MaxMemoryMiB != 0 || len(m.PCIeRootPorts) != 0 || strings.Contains(m.KernelParams, "swiotlb") {
				t.Errorf("kind %s, limits %+v, max %d, ports %v, params %q", m.Kind, l, m.MaxMemoryMiB, m.PCIeRootPorts, m.KernelParams)
			}
		}},
		{name: "no hot-plug room", edit: func(c *config.Config) { c.Hypervisor.DefaultMaxMemoryMiB = 256 }, check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if l.Mechanism != memory.None || m.MaxMemoryMiB != 0 || m.VirtioMem != nil {
				t.Errorf("limits %+v, max %d, virtio-mem %+v", l, m.MaxMemoryMiB, m.VirtioMem)
			}
		}},
		{name: "no balloon", edit: func(c *config.Config) { c.Hypervisor.FreePageReporting = false; c.Memory.Elastic = false }, check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if m.Balloon != nil {
				t.Errorf("balloon %+v without free_page_reporting or elastic memory", m.Balloon)
			}
		}},
		{name: "kernel params last", edit: func(c *config.Config) { c.Hypervisor.KernelParams = "loglevel=7"; c.Debug.GuestExec = true }, check: func(t *testing.T, m vmm.Spec, l memory.Limits) {
			if !strings.HasSuffix(m.KernelParams, " loglevel=7") || !strings.Contains(m.KernelParams, agentCmdlineDebugExec+"=1") {
				t.Errorf("kernel params %q", m.KernelParams)
			}
		}},
		{name: "vsock without vhost-vsock", edit: func(c *config.Config) { c.Agent.Transport = config.TransportVsock }, err: errdefs.ErrFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Guest.Kernel, cfg.Guest.Initrd = "/k/vmlinuz", "/k/initrd"
			if tc.edit != nil {
				tc.edit(cfg)
			}
			if _, err := os.Stat(vhostVsockDevice); err == nil && tc.err != nil {
				t.Skip("this host has " + vhostVsockDevice)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			s := &Sandbox{id: "spec", cfg: cfg, dir: t.TempDir()}
			m, err := s.machine(tc.opts)
			if tc.err != nil {
				if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "agent.transport") {
					t.Fatalf("%v, want FailedPrecondition naming agent.transport", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := memoryLayout(cfg, &m)
			if _, _, err := planTopology(cfg, &m, nil); err != nil {
				t.Fatal(err)
			}
			tc.check(t, m, l)
			if err := qemu.MachineFor(m).Validate(); err != nil {
				t.Errorf("the QEMU driver refuses the spec: %v", err)
			}
		})
	}
}
