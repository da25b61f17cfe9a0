package guest

import (
	"strings"
	"testing"
)

// TestModularFeatureNeedsItsModulesPacked: a kernel that has a feature as
// modules only has it in the guest if the image packs them, because the
// guest does not load modules on demand. `berth guest info` said "module"
// for the Debian kernel's netfilter while the image packed none of it.
func TestModularFeatureNeedsItsModulesPacked(t *testing.T) {
	var bridge KernelFeature
	for _, f := range KernelFeatures {
		if f.Name == "bridge, veth, tun" {
			bridge = f
		}
	}
	if len(bridge.Modules) == 0 {
		t.Fatal("no bridge feature with modules in KernelFeatures")
	}
	cfg := map[string]string{}
	for _, o := range bridge.Options {
		cfg[o] = "m"
	}
	status := func(packed []string) FeatureStatus {
		for _, s := range CheckKernelFeatures(cfg, packed) {
			if s.Name == bridge.Name {
				return s
			}
		}
		t.Fatal("bridge feature not graded")
		return FeatureStatus{}
	}
	if s := status(nil); s.OK() || !strings.Contains(strings.Join(s.Missing, ","), "module bridge not in the guest image") {
		t.Errorf("nothing packed: missing %v, want the bridge module named", s.Missing)
	}
	packed := []string{"kernel/net/bridge/bridge.ko", "kernel/drivers/net/veth.ko", "tun"}
	if s := status(packed); !s.OK() || len(s.Modular) != len(bridge.Options) {
		t.Errorf("all packed: missing %v, modular %v", s.Missing, s.Modular)
	}
	for o := range cfg {
		cfg[o] = "y"
	}
	if s := status(nil); !s.OK() {
		t.Errorf("built in: missing %v", s.Missing)
	}
}
