// Package drivers maps hypervisor.driver to its vmm.Driver. It is the one
// place that links every driver; the shim and berth run pick one here,
// once, and inject it into each sandbox (sandbox.Options.Driver), so that
// internal/sandbox knows no hypervisor.
package drivers

import (
	"fmt"
	"sort"

	"github.com/containerd/errdefs"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/vmm"
)

// registry holds every driver by its hypervisor.driver name; config.Drivers
// lists the same names (a test keeps them equal).
var registry = map[string]vmm.Driver{
	qemu.DriverName: qemu.Driver{},
}

// Get returns the driver called name.
func Get(name string) (vmm.Driver, error) {
	d, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("hypervisor.driver = %q is not a driver of this build (have %v): %w", name, Names(), errdefs.ErrInvalidArgument)
	}
	return d, nil
}

// For returns the driver cfg selects.
func For(cfg *config.Config) (vmm.Driver, error) { return Get(cfg.Hypervisor.Driver) }

// Names lists the registered drivers, sorted.
func Names() []string {
	var names []string
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
