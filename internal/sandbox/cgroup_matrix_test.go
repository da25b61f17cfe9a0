package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/cgroup/cgrouptest"
	"github.com/berth-runtime/berth/internal/config"
)

// TestCgroupCombinations walks every combination of machine type,
// sandbox_cgroup_only, host cgroup layout, cgroup manager and whether
// systemd runs (seed 001). Each cell either fails to load with an error
// naming cgroup.manager and the fix, or loads, and then the sandbox
// cgroup is built for real on a fake tree of that layout and taken
// through its life: create, add the VMM, resize, delete. No cell may
// panic or end up without a controller.
func TestCgroupCombinations(t *testing.T) {
	ctx := context.Background()
	for _, machine := range []string{config.MachineQ35, config.MachineMicroVM} {
		for _, only := range []bool{true, false} {
			for _, layout := range []cgroup.Layout{cgroup.LayoutV1, cgroup.LayoutV2, cgroup.LayoutHybrid, cgroup.LayoutNone} {
				for _, manager := range []string{config.CgroupManagerCgroupfs, config.CgroupManagerSystemd, config.CgroupManagerNone} {
					for _, systemd := range []bool{false, true} {
						name := fmt.Sprintf("%s/only=%v/%s/%s/systemd=%v", machine, only, layout, manager, systemd)
						t.Run(name, func(t *testing.T) {
							defer func() {
								if r := recover(); r != nil {
									t.Fatalf("panic: %v", r)
								}
							}()
							cell(ctx, t, machine, only, layout, manager, systemd)
						})
					}
				}
			}
		}
	}
}

func cell(ctx context.Context, t *testing.T, machine string, only bool, layout cgroup.Layout, manager string, systemd bool) {
	parent := "/berth"
	if manager == config.CgroupManagerSystemd {
		parent = "berth.slice"
	}
	toml := fmt.Sprintf("[hypervisor]\nmachine = %q\n[cgroup]\nmanager = %q\nparent = %q\nsandbox_cgroup_only = %v\n", machine, manager, parent, only)
	file := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(file, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file, config.Overrides{Host: &config.Host{CgroupLayout: string(layout), Systemd: systemd}})

	var wantErr string
	switch {
	case manager == config.CgroupManagerNone:
	case layout == cgroup.LayoutNone:
		wantErr = `set cgroup.manager = "none"`
	case manager == config.CgroupManagerSystemd && !systemd:
		wantErr = `not running on this host (PID 1 is not systemd); use "cgroupfs"`
	case manager == config.CgroupManagerSystemd && layout != cgroup.LayoutV2:
		wantErr = `cgroup v2 hosts only; this host is ` + string(layout) + `; use "cgroupfs"`
	}
	if wantErr != "" {
		if err == nil {
			t.Fatalf("loaded; want an error saying %q", wantErr)
		}
		kes := config.KeyErrors(err)
		if len(kes) == 0 || kes[0].Key != "cgroup.manager" || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %q; want one on cgroup.manager saying %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	// What containerd passes as the pod's cgroup, in the driver's form.
	id := "0123456789abcdef"
	podPath := "/kubepods/besteffort/pod42/" + id
	if manager == config.CgroupManagerSystemd {
		podPath = "kubepods-besteffort-pod42.slice:cri-containerd:" + id
	}
	host := cgrouptest.Host(t, t.TempDir(), layout, systemd, "/berth", "/kubepods", "/kubepods/besteffort", "/kubepods/besteffort/pod42")
	m, err := NewCgroupManager(cfg, host)
	if err != nil || m == nil {
		t.Fatalf("NewCgroupManager = %v, %v", m, err)
	}
	path, err := CgroupPath(cfg, id, podPath)
	if err != nil {
		t.Fatalf("CgroupPath: %v", err)
	}
	// true: the pod's sandbox cgroup itself; false: the VMM's own
	// cgroup beside it, inside the pod cgroup.
	want := podPath
	if !only {
		want = "/kubepods/besteffort/pod42/berth-" + id
		if manager == config.CgroupManagerSystemd {
			want = "kubepods-besteffort-pod42.slice:berth:" + id
		}
	}
	if path != want {
		t.Errorf("sandbox_cgroup_only=%v: cgroup path %q, want %q", only, path, want)
	}
	cg, err := m.New(ctx, path, cgroup.Limits{MemoryBytes: cfg.SandboxMemoryLimitBytes(cfg.Hypervisor.DefaultMemoryMiB)})
	if err != nil || cg == nil {
		t.Fatalf("New(%q) = %v, %v", path, cg, err)
	}
	if manager == config.CgroupManagerSystemd {
		// Adding a process starts the scope over D-Bus, which a unit
		// test cannot reach; before that, Update and Delete only
		// record.
		if err := cg.Update(ctx, cgroup.Limits{MemoryBytes: 1 << 30}); err != nil {
			t.Errorf("Update: %v", err)
		}
		if err := cg.Delete(ctx); err != nil {
			t.Errorf("Delete: %v", err)
		}
		return
	}
	if err := cg.Add(ctx, 4242); err != nil {
		t.Fatalf("Add: %v", err)
	}
	if err := cg.Update(ctx, cgroup.Limits{MemoryBytes: 1 << 30, CPUQuotaUsec: 50000, CPUPeriodUsec: 100000}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	cgrouptest.Exited(host, path)
	if err := cg.Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}
