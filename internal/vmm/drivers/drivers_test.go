package drivers

import (
	"errors"
	"slices"
	"sort"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/berth-runtime/berth/internal/config"
)

// TestRegistryMatchesConfig: every value config accepts for
// hypervisor.driver has a driver, and every driver can be selected.
func TestRegistryMatchesConfig(t *testing.T) {
	want := slices.Clone(config.Drivers)
	sort.Strings(want)
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("registered drivers %v, config accepts %v", got, want)
	}
	for _, n := range want {
		d, err := Get(n)
		if err != nil {
			t.Fatal(err)
		}
		if d.Name() != n {
			t.Errorf("driver %q calls itself %q", n, d.Name())
		}
	}
	d, err := For(config.Default())
	if err != nil || d.Name() != config.DriverQEMU {
		t.Errorf("default driver: %v, %v", d, err)
	}
	if _, err := Get("xen"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unknown driver: %v", err)
	}
}
