package cgroup_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/cgroup/cgrouptest"
)

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestFakeHostLifecycle creates, fills, resizes and deletes a sandbox
// cgroup on fake v1, v2 and hybrid trees.
func TestFakeHostLifecycle(t *testing.T) {
	ctx := context.Background()
	for _, layout := range []Layout{LayoutV1, LayoutV2, LayoutHybrid} {
		t.Run(string(layout), func(t *testing.T) {
			dir := t.TempDir()
			h := cgrouptest.Host(t, dir, layout, false, "/berth")
			m, err := NewManager(Options{Driver: DriverCgroupfs, Host: h})
			if err != nil {
				t.Fatal(err)
			}
			cg, err := m.New(ctx, "/berth/sb1", Limits{MemoryBytes: 512 << 20})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			limitFile := filepath.Join(dir, "memory", "berth", "sb1", "memory.limit_in_bytes")
			if layout == LayoutV2 {
				limitFile = filepath.Join(dir, "berth", "sb1", "memory.max")
			}
			if got := readFile(t, limitFile); got != strconv.Itoa(512<<20) {
				t.Errorf("memory limit %s, want %d", got, 512<<20)
			}
			if err := cg.Add(ctx, 4242); err != nil {
				t.Fatalf("Add: %v", err)
			}
			if pids, err := cg.Pids(ctx); err != nil || len(pids) != 1 || pids[0] != 4242 {
				t.Errorf("Pids = %v, %v", pids, err)
			}
			if err := cg.Update(ctx, Limits{MemoryBytes: 1 << 30, CPUQuotaUsec: 50000, CPUPeriodUsec: 100000}); err != nil {
				t.Fatalf("Update: %v", err)
			}
			if got := readFile(t, limitFile); got != strconv.Itoa(1<<30) {
				t.Errorf("memory limit after Update %s, want %d", got, 1<<30)
			}
			if layout == LayoutV2 {
				if got := readFile(t, filepath.Join(dir, "berth", "sb1", "cpu.max")); got != "50000 100000" {
					t.Errorf("cpu.max %q", got)
				}
			} else if got := readFile(t, filepath.Join(dir, "cpu", "berth", "sb1", "cpu.cfs_quota_us")); got != "50000" {
				t.Errorf("cpu.cfs_quota_us %q", got)
			}
			// Pinned, then every CPU of the parent again: "" on v2, the
			// parent's list on v1, where a cpuset cannot be emptied.
			cpusFile := filepath.Join(dir, "cpuset", "berth", "sb1", "cpuset.cpus")
			unpinned := "0-3"
			if layout == LayoutV2 {
				cpusFile, unpinned = filepath.Join(dir, "berth", "sb1", "cpuset.cpus"), ""
			}
			if err := cg.Update(ctx, Limits{MemoryBytes: 1 << 30, CPUs: "1,3"}); err != nil {
				t.Fatalf("Update with CPUs: %v", err)
			}
			if got := readFile(t, cpusFile); got != "1,3" {
				t.Errorf("pinned: cpuset.cpus %q, want 1,3", got)
			}
			if err := cg.Update(ctx, Limits{MemoryBytes: 1 << 30}); err != nil {
				t.Fatalf("Update without CPUs: %v", err)
			}
			if got := readFile(t, cpusFile); got != unpinned {
				t.Errorf("unpinned: cpuset.cpus %q, want %q", got, unpinned)
			}
			// The VMM has exited: the kernel empties cgroup.procs.
			cgrouptest.Exited(h, "/berth/sb1")
			if err := cg.Delete(ctx); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := os.Stat(filepath.Dir(limitFile)); !os.IsNotExist(err) {
				t.Errorf("%s still exists after Delete", filepath.Dir(limitFile))
			}
			if err := m.Remove(ctx, "/berth/sb1"); err != nil {
				t.Errorf("Remove of a deleted cgroup: %v", err)
			}
		})
	}
}

// TestRealHost creates a sandbox cgroup on this host, puts a process in
// it and removes it. It needs root and a cgroup file system.
func TestRealHost(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("needs root; not in -short")
	}
	ctx := context.Background()
	h, err := Detect()
	if err != nil || h.Layout == LayoutNone {
		t.Skipf("no cgroups: %v", err)
	}
	m, err := NewManager(Options{Driver: DriverCgroupfs, Host: h})
	if err != nil {
		t.Fatal(err)
	}
	path := "/berth-unit-test/" + strconv.Itoa(os.Getpid())
	cg, err := m.New(ctx, path, Limits{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cg.Delete(ctx); err != nil {
			t.Error(err)
		}
		os.Remove(filepath.Join(h.V1Root(), "memory", "berth-unit-test"))
		for _, c := range []string{"cpu", "cpuacct", "pids", "cpuset"} {
			os.Remove(filepath.Join(h.V1Root(), c, "berth-unit-test"))
		}
		os.Remove(filepath.Join(h.V2Mount, "berth-unit-test"))
	}()
	t.Logf("%s on %s", m.Name(), h)
	if err := cg.Update(ctx, Limits{MemoryBytes: 128 << 20, CPUQuotaUsec: 20000, CPUPeriodUsec: 100000}); err != nil {
		t.Fatal(err)
	}
	if pids, err := cg.Pids(ctx); err != nil || len(pids) != 0 {
		t.Errorf("new cgroup holds %v, %v", pids, err)
	}
	// A process left behind (its owner died) is killed by Remove.
	sleep := exec.Command("sleep", "100")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sleep.Wait() }()
	if err := cg.Add(ctx, sleep.Process.Pid); err != nil {
		sleep.Process.Kill()
		t.Fatal(err)
	}
	if pids, _ := cg.Pids(ctx); len(pids) != 1 || pids[0] != sleep.Process.Pid {
		t.Errorf("Pids = %v, want [%d]", pids, sleep.Process.Pid)
	}
	// Pinned to CPU 0 (the kubelet's static CPU manager), then every CPU
	// of the parent again.
	if err := cg.Update(ctx, Limits{MemoryBytes: 128 << 20, CPUs: "0"}); err != nil {
		t.Fatal(err)
	}
	if got := cpusAllowed(t, sleep.Process.Pid); got != "0" {
		t.Errorf("pinned to CPU 0: the process may run on %q", got)
	}
	if err := cg.Update(ctx, Limits{MemoryBytes: 128 << 20}); err != nil {
		t.Fatal(err)
	}
	if got, want := cpusAllowed(t, sleep.Process.Pid), cpusAllowed(t, os.Getpid()); got != want {
		t.Errorf("unpinned: the process may run on %q, want %q as its parent", got, want)
	}
	if err := m.Remove(ctx, path); err != nil {
		t.Errorf("Remove: %v", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		sleep.Process.Kill()
		t.Error("Remove left the process running")
	}
	if err := m.Remove(ctx, path); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

// cpusAllowed is a process's Cpus_allowed_list.
func cpusAllowed(t *testing.T, pid int) string {
	t.Helper()
	for _, line := range strings.Split(readFile(t, "/proc/"+strconv.Itoa(pid)+"/status"), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no Cpus_allowed_list for pid %d", pid)
	return ""
}
