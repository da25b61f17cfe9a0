package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/cgroup/cgrouptest"
	"github.com/berth-runtime/berth/internal/config"
)

// pathCgroup is a VMM cgroup that only has a path.
type pathCgroup struct {
	cgroup.Cgroup
	path string
}

func (p pathCgroup) Path() string { return p.path }

// TestPerContainerCgroups: with sandbox_cgroup_only = false each
// container's linux.cgroupsPath is made on the host with its limits,
// follows updates, is recorded in cgroup.json for a crash, and goes with
// the container; on a fake v1 tree.
func TestPerContainerCgroups(t *testing.T) {
	ctx := context.Background()
	for _, layout := range []cgroup.Layout{cgroup.LayoutV1, cgroup.LayoutHybrid, cgroup.LayoutV2} {
		t.Run(string(layout), func(t *testing.T) {
			host := cgrouptest.Host(t, t.TempDir(), layout, false, "/kubepods", "/kubepods/pod1")
			cfg := config.Default()
			cfg.Cgroup.SandboxCgroupOnly = false
			m, err := NewCgroupManager(cfg, host)
			if err != nil {
				t.Fatal(err)
			}
			// The process-wide manager cache is what the sandbox uses;
			// point it at the fake tree for this test.
			managers.Store(cfg.Cgroup.Manager, m)
			defer managers.Delete(cfg.Cgroup.Manager)

			s := &Sandbox{id: "pod", cfg: cfg, dir: t.TempDir(), cgroup: pathCgroup{path: "/kubepods/pod1/berth-pod"}}
			s.pod.perContainer = true
			limit := int64(64 << 20)
			res := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)}}
			if err := s.addContainerCgroup(ctx, "app", "/kubepods/pod1/app", res); err != nil {
				t.Fatal(err)
			}
			memFile := func(name string) string {
				if layout == cgroup.LayoutV2 {
					return filepath.Join(host.V2Mount, "/kubepods/pod1/app", map[string]string{"limit": "memory.max", "cpu": "cpu.max"}[name])
				}
				return filepath.Join(host.V1Mounts[map[string]string{"limit": "memory", "cpu": "cpu"}[name]], "/kubepods/pod1/app",
					map[string]string{"limit": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us"}[name])
			}
			read := func(f string) string { b, _ := os.ReadFile(f); return strings.TrimSpace(string(b)) }
			if got := read(memFile("limit")); got != "67108864" {
				t.Errorf("memory limit %q, want 64 MiB", got)
			}
			if got := read(memFile("cpu")); !strings.HasPrefix(got, "50000") {
				t.Errorf("cpu quota %q, want 50000", got)
			}
			var rec cgroupRecord
			b, _ := os.ReadFile(filepath.Join(s.dir, cgroupFileName))
			if err := json.Unmarshal(b, &rec); err != nil || rec.Path != "/kubepods/pod1/berth-pod" || len(rec.Containers) != 1 || rec.Containers[0] != "/kubepods/pod1/app" {
				t.Errorf("cgroup.json %s (%v)", b, err)
			}
			limit = 32 << 20
			s.updateContainerCgroup(ctx, "app", res)
			if got := read(memFile("limit")); got != "33554432" {
				t.Errorf("memory limit after update %q, want 32 MiB", got)
			}
			// A container whose spec names no path gets no host cgroup.
			if err := s.addContainerCgroup(ctx, "nolimits", "", nil); err != nil || len(s.pod.containers) != 1 {
				t.Errorf("a container without a path: %v, %d cgroups", err, len(s.pod.containers))
			}
			cgrouptest.Exited(host, "/kubepods/pod1/app")
			s.removeContainerCgroup(ctx, "app")
			if _, err := os.Stat(filepath.Dir(memFile("limit"))); !os.IsNotExist(err) {
				t.Errorf("the container's host cgroup is left: %v", err)
			}
			b, _ = os.ReadFile(filepath.Join(s.dir, cgroupFileName))
			if strings.Contains(string(b), "/app") {
				t.Errorf("cgroup.json still lists the removed container: %s", b)
			}
		})
	}
}
