package config

import (
	"strings"
	"testing"
)

// TestHostProblems: settings that cannot work on the host are load errors
// naming cgroup.manager and the fix.
func TestHostProblems(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		host       Host
		want       string // "" = loads
	}{
		{"cgroupfs on hybrid", "", Host{CgroupLayout: LayoutHybrid}, ""},
		{"cgroupfs on v1", "", Host{CgroupLayout: LayoutV1}, ""},
		{"cgroupfs on v2 with systemd", "", Host{CgroupLayout: LayoutV2, Systemd: true}, ""},
		{"cgroupfs without cgroups", "", Host{CgroupLayout: LayoutNone}, `set cgroup.manager = "none"`},
		{"none without cgroups", "[cgroup]\nmanager = \"none\"", Host{CgroupLayout: LayoutNone}, ""},
		{"systemd without systemd", "[cgroup]\nmanager = \"systemd\"\nparent = \"berth.slice\"", Host{CgroupLayout: LayoutV2}, `not running on this host (PID 1 is not systemd); use "cgroupfs"`},
		{"systemd on hybrid", "[cgroup]\nmanager = \"systemd\"\nparent = \"berth.slice\"", Host{CgroupLayout: LayoutHybrid, Systemd: true}, "cgroup v2 hosts only"},
		{"systemd on v2", "[cgroup]\nmanager = \"systemd\"\nparent = \"berth.slice\"", Host{CgroupLayout: LayoutV2, Systemd: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.toml+"\n")
			h := tc.host
			_, err := Load(path, Overrides{Host: &h})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			kes := KeyErrors(err)
			if len(kes) != 1 || kes[0].Key != "cgroup.manager" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error %v; want one error on cgroup.manager saying %q", err, tc.want)
			}
		})
	}
}

func TestSandboxMemoryLimit(t *testing.T) {
	c := Default()
	if got, want := c.SandboxMemoryLimitBytes(256), int64(256+384)<<20; got != want {
		t.Errorf("SandboxMemoryLimitBytes(256) = %d, want %d", got, want)
	}
}
