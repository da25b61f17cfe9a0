package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/device"
	"github.com/berth-runtime/berth/internal/memory"
	"github.com/berth-runtime/berth/internal/vmm"
)

// accelProbeTimeout bounds the throw-away VM an "auto" detection may boot.
const accelProbeTimeout = 5 * time.Second

// ResolveAccel turns hypervisor.accel into the accelerator to use. "auto"
// asks the driver (vmm.AccelDetector), which tries KVM for real once per
// boot of the host and caches the verdict in run_dir; a driver that cannot
// detect makes "auto" an error naming the key.
func ResolveAccel(ctx context.Context, cfg *config.Config, d vmm.Driver) (vmm.Accel, error) {
	switch cfg.Hypervisor.Accel {
	case config.AccelKVM:
		return vmm.KVM, nil
	case config.AccelTCG:
		return vmm.TCG, nil
	}
	det, ok := d.(vmm.AccelDetector)
	if !ok {
		return "", fmt.Errorf("hypervisor.accel = %q: %w; set hypervisor.accel = %q or %q",
			cfg.Hypervisor.Accel, vmm.Unsupported(d.Name(), "detect the accelerator"), config.AccelKVM, config.AccelTCG)
	}
	accel, reason, err := det.DetectAccel(ctx, vmm.AccelProbe{
		Binary: cfg.Hypervisor.Path, Kernel: cfg.Guest.Kernel, Timeout: accelProbeTimeout,
	}, filepath.Join(cfg.RunDir, "accel.json"))
	if err != nil {
		return "", fmt.Errorf("probe accelerator: %w", err)
	}
	logrus.Infof("accelerator %s: %s", accel, reason)
	return accel, nil
}

// useCapabilities finds what the running VM can do beyond start and stop.
// Memory hot-plug the configuration asked for and the driver lacks fails
// the create, naming both; a missing device hot-plug only fails the
// container that asks for a device (vmPlugger).
func (s *Sandbox) useCapabilities(vm vmm.VM, spec vmm.Spec, topo device.Topology, cold device.Devices) error {
	if s.memory.limits.Mechanism != memory.None {
		hp, ok := vm.(vmm.MemoryHotplugger)
		if !ok {
			return fmt.Errorf("%w: set hypervisor.memory_hotplug = %q", vmm.Unsupported(s.driver, "hot-plug memory"), config.MemoryHotplugNone)
		}
		s.memory.hp = hp
	}
	if spec.Kind.HasPCIe() {
		hp, _ := vm.(vmm.DeviceHotplugger) // nil: every plug says why
		p := vmPlugger{hp: hp, driver: s.driver, cfg: s.cfg}
		s.devices = device.NewManager(deviceConfig(s.cfg), topo, cold, p, p)
	}
	return nil
}
