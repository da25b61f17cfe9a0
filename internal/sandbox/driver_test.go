package sandbox

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/device"
	"github.com/berth-runtime/berth/internal/memory"
	"github.com/berth-runtime/berth/internal/vmm"
)

// bareDriver is a driver with no capability beyond start and stop.
type bareDriver struct{}

func (bareDriver) Name() string { return "bare" }
func (bareDriver) Start(context.Context, vmm.Spec, vmm.StartOptions) (vmm.VM, error) {
	return bareVM{newFakeGuest(0)}, nil
}

// bareVM hides fakeGuest's memory hot-plug.
type bareVM struct{ g *fakeGuest }

func (v bareVM) Pid() int                           { return v.g.Pid() }
func (v bareVM) Done() <-chan struct{}              { return v.g.Done() }
func (v bareVM) ExitError() error                   { return nil }
func (v bareVM) Shutdown(ctx context.Context) error { return v.g.Shutdown(ctx) }
func (v bareVM) Kill() error                        { return v.g.Kill() }

// TestMissingCapabilitiesAreErrors: a driver without memory hot-plug, KVM
// detection or device hot-plug is told so, by name, wherever the
// configuration needs the capability; it never silently goes without.
func TestMissingCapabilitiesAreErrors(t *testing.T) {
	ctx := context.Background()
	d := bareDriver{}
	vm, _ := d.Start(ctx, vmm.Spec{}, vmm.StartOptions{})
	notImpl := func(what string, err error) {
		t.Helper()
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), `hypervisor.driver "bare"`) {
			t.Errorf("%s: %v, want NotImplemented naming the driver", what, err)
		}
	}

	cfg := config.Default()
	_, err := ResolveAccel(ctx, cfg, d)
	notImpl("accel auto", err)
	if !strings.Contains(err.Error(), "hypervisor.accel") {
		t.Errorf("accel auto: %v does not name hypervisor.accel", err)
	}
	cfg.Hypervisor.Accel = config.AccelTCG
	if a, err := ResolveAccel(ctx, cfg, d); err != nil || a != vmm.TCG {
		t.Errorf("accel tcg: %v, %v", a, err)
	}

	s := &Sandbox{id: "caps", cfg: config.Default(), driver: d.Name()}
	s.memory.limits = memory.Limits{Mechanism: memory.VirtioMem}
	err = s.useCapabilities(vm, vmm.Spec{Kind: vmm.Q35}, device.Topology{}, device.Devices{})
	notImpl("memory hot-plug", err)
	if !strings.Contains(err.Error(), "hypervisor.memory_hotplug") {
		t.Errorf("memory hot-plug: %v does not name hypervisor.memory_hotplug", err)
	}

	// Without memory hot-plug the VM is usable; its device manager says
	// why a plug fails (TestVMPluggerWithoutHotplug).
	s.memory.limits = memory.Limits{Mechanism: memory.None}
	if err := s.useCapabilities(vm, vmm.Spec{Kind: vmm.Q35}, device.Topology{}, device.Devices{}); err != nil || s.devices == nil || s.memory.hp != nil {
		t.Errorf("no hot-plug asked: %v, devices %v, memory hot-plugger %v", err, s.devices, s.memory.hp)
	}

	// A full VM is used for both.
	g := newFakeGuest(0)
	s = &Sandbox{id: "caps", cfg: config.Default(), driver: "fake"}
	s.memory.limits = memory.Limits{Mechanism: memory.DIMM}
	if err := s.useCapabilities(g, vmm.Spec{Kind: vmm.MicroVM}, device.Topology{}, device.Devices{}); err != nil || s.memory.hp == nil || s.devices != nil {
		t.Errorf("full VM on microvm: %v, hot-plugger %v, devices %v", err, s.memory.hp, s.devices)
	}

	// Create refuses a missing driver before touching the host.
	if _, err := Create(ctx, config.Default(), Options{ID: "nodriver"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Create without a driver: %v", err)
	}
}
