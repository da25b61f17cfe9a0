package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/device"
	"github.com/berth-runtime/berth/internal/vmm"
)

// deviceConfig is the device part of the configuration.
func deviceConfig(c *config.Config) device.Config {
	d := c.Devices
	return device.Config{
		RootPorts:    d.PCIeRootPort,
		Bridges:      d.PCIBridges,
		SwitchPorts:  d.PCIeSwitchPort,
		ColdPlugVFIO: device.PortType(d.ColdPlugVFIO),
		HotPlugVFIO:  device.PortType(d.HotPlugVFIO),
		Mode:         device.VFIOMode(d.VFIOMode),
	}
}

// ColdPlugVFIO returns the VFIO groups of spec that a sandbox booted for it
// would cold-plug: none unless devices.cold_plug_vfio is set. The shim
// passes them in Options when the container boots the VM.
func ColdPlugVFIO(cfg *config.Config, spec *specs.Spec) ([]device.VFIOGroup, error) {
	if cfg.Devices.ColdPlugVFIO == config.PortNone || spec == nil {
		return nil, nil
	}
	req, err := device.FromSpec(spec, device.Sysfs{})
	if err != nil {
		return nil, classifyDeviceError(err)
	}
	return req.VFIO, nil
}

// planTopology adds the PCIe topology and cold-plugged VFIO functions to m.
// microvm has no PCI: it gets no ports, and a container asking for a
// device there fails in CreateContainer.
func planTopology(cfg *config.Config, m *vmm.Spec, cold []device.VFIOGroup) (device.Topology, device.Devices, error) {
	if !m.Kind.HasPCIe() {
		if len(cold) > 0 {
			return device.Topology{}, device.Devices{}, fmt.Errorf("cold-plugging VFIO needs hypervisor.machine = \"q35\": %w", errdefs.ErrInvalidArgument)
		}
		return device.Topology{}, device.Devices{}, nil
	}
	topo, coldDevs, err := device.Plan(deviceConfig(cfg), cold)
	if err != nil {
		return device.Topology{}, device.Devices{}, classifyDeviceError(err)
	}
	for _, p := range topo.RootPorts {
		m.PCIeRootPorts = append(m.PCIeRootPorts, vmm.PCIeRootPort{ID: p.ID, Slot: int(p.Slot), Chassis: p.Chassis})
	}
	for _, b := range topo.Bridges {
		m.PCIBridges = append(m.PCIBridges, vmm.PCIBridge{ID: b.ID, Slot: int(b.Slot)})
	}
	if sw := topo.Switch; sw != nil {
		q := vmm.PCIeSwitch{
			RootPort:   vmm.PCIeRootPort{ID: sw.RootPort.ID, Slot: int(sw.RootPort.Slot), Chassis: sw.RootPort.Chassis},
			UpstreamID: sw.UpstreamID,
		}
		for _, d := range sw.Downstream {
			q.Downstream = append(q.Downstream, vmm.PCIeDownstreamPort{ID: d.ID, Slot: int(d.Slot), Chassis: d.Chassis})
		}
		m.PCIeSwitches = append(m.PCIeSwitches, q)
	}
	for _, a := range coldDevs.VFIO {
		m.VFIODevices = append(m.VFIODevices, vfioDevice(a))
	}
	return topo, coldDevs, nil
}

func vfioDevice(a device.VFIOAttachment) vmm.VFIODevice {
	return vmm.VFIODevice{ID: a.ID, Host: string(a.Function), Bus: a.Port.Bus, Addr: int(a.Port.Addr)}
}

func blockDevice(a device.BlockAttachment) vmm.BlockDevice {
	return vmm.BlockDevice{ID: a.ID, Path: a.Block.HostPath, ReadOnly: a.Block.ReadOnly, Bus: a.Port.Bus, Addr: int(a.Port.Addr)}
}

// vmPlugger adapts a VM's vmm.DeviceHotplugger to the device package's
// interfaces, bounding each unplug by devices.unplug_timeout. hp is nil
// when the driver cannot hot-plug: every plug then fails, naming it.
type vmPlugger struct {
	hp     vmm.DeviceHotplugger
	driver string
	cfg    *config.Config
}

func (q vmPlugger) unsupported() error { return vmm.Unsupported(q.driver, "hot-plug devices") }

func (q vmPlugger) unplugCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, q.cfg.Devices.UnplugTimeout.Duration)
}

func (q vmPlugger) PlugBlock(ctx context.Context, a device.BlockAttachment) error {
	if err := refuseMountedBlock(a.Block.HostPath); err != nil {
		return err
	}
	if q.hp == nil {
		return q.unsupported()
	}
	return q.hp.HotplugBlock(ctx, blockDevice(a))
}

func (q vmPlugger) UnplugBlock(ctx context.Context, a device.BlockAttachment) error {
	if q.hp == nil {
		return q.unsupported()
	}
	ctx, cancel := q.unplugCtx(ctx)
	defer cancel()
	return q.hp.UnplugBlock(ctx, blockDevice(a))
}

func (q vmPlugger) PlugVFIO(ctx context.Context, a device.VFIOAttachment) error {
	if q.hp == nil {
		return q.unsupported()
	}
	return q.hp.HotplugVFIO(ctx, vfioDevice(a))
}

func (q vmPlugger) UnplugVFIO(ctx context.Context, a device.VFIOAttachment) error {
	if q.hp == nil {
		return q.unsupported()
	}
	ctx, cancel := q.unplugCtx(ctx)
	defer cancel()
	return q.hp.UnplugDevice(ctx, a.ID)
}

// classifyDeviceError maps the device package's errors to errdefs, so the
// shim reports them with the right gRPC code.
func classifyDeviceError(err error) error {
	switch {
	case errors.Is(err, device.ErrNoPort):
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	case errors.Is(err, device.ErrInvalid):
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return err
}

// attachDevices plugs in what the container's spec asks for and returns
// the list the agent gets, plus the indexes of mounts that are now disks
// (not to be shared over virtio-fs). The devices are the union of the
// cold-plugged and hot-plugged ones (device.Manager.Attach).
func (s *Sandbox) attachDevices(ctx context.Context, id string, spec *specs.Spec) ([]*api.Device, map[int]bool, error) {
	req, err := device.FromSpec(spec, s.hostDevices)
	if err != nil {
		return nil, nil, classifyDeviceError(err)
	}
	if req.Empty() {
		return nil, nil, nil
	}
	if s.devices == nil {
		return nil, nil, fmt.Errorf("container %q asks for %d devices, but machine %q has no PCI to plug them into: set hypervisor.machine = \"q35\": %w",
			id, len(req.Blocks)+len(req.VFIO), s.cfg.Hypervisor.Machine, errdefs.ErrInvalidArgument)
	}
	got, err := s.devices.Attach(ctx, id, req)
	if err != nil {
		return nil, nil, classifyDeviceError(err)
	}
	var out []*api.Device
	mounts := map[int]bool{}
	for _, a := range got.Blocks {
		d := &api.Device{Kind: api.DeviceKind_DEVICE_BLOCK, PciPath: a.Port.Path.String(), ContainerPath: a.Block.ContainerPath,
			HostMajor: a.Block.HostMajor, HostMinor: a.Block.HostMinor}
		if a.Block.MountIndex >= 0 {
			d.IsMount, d.MountIndex = true, uint32(a.Block.MountIndex)
			mounts[a.Block.MountIndex] = true
		}
		out = append(out, d)
	}
	for _, a := range got.VFIO {
		out = append(out, &api.Device{Kind: api.DeviceKind_DEVICE_VFIO, PciPath: a.Port.Path.String(), ContainerPath: a.Group.ContainerPath,
			HostMajor: a.Group.HostMajor, HostMinor: a.Group.HostMinor, VfioMode: string(a.Mode)})
	}
	return out, mounts, nil
}

// ReleaseDevices unplugs the devices hot-plugged for container id and
// gives them back to the host. Call it when the container has ended; it is
// idempotent, and DeleteContainer does it too.
func (s *Sandbox) ReleaseDevices(ctx context.Context, id string) error {
	return s.detachDevices(ctx, id)
}

// detachDevices unplugs the container's hot-plugged devices.
func (s *Sandbox) detachDevices(ctx context.Context, id string) error {
	if s.devices == nil {
		return nil
	}
	return s.devices.Detach(ctx, id)
}

// WaitDevice asks the agent to wait for a device at pciPath; benchmarks
// and tests use it to time a hot-plug.
func (s *Sandbox) WaitDevice(ctx context.Context, kind api.DeviceKind, pciPath string) (*api.WaitDeviceResponse, error) {
	r, err := s.agent.WaitDevice(ctx, &api.WaitDeviceRequest{Kind: kind, PciPath: pciPath})
	if err != nil {
		return nil, s.rpcError("wait for device", err)
	}
	return r, nil
}
