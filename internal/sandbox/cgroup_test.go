package sandbox

import (
	"context"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/config"
)

// recordingCgroup remembers the limits it was given.
type recordingCgroup struct {
	cgroup.Cgroup
	limits []cgroup.Limits
}

func (r *recordingCgroup) Update(_ context.Context, l cgroup.Limits) error {
	r.limits = append(r.limits, l)
	return nil
}

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }

// TestSandboxCgroupFollowsResizeAndCPU: the cgroup's memory limit follows
// the VM's memory, and its CPU quota is the sum of the containers' while
// every app container has one.
func TestSandboxCgroupFollowsResizeAndCPU(t *testing.T) {
	ctx := context.Background()
	rec := &recordingCgroup{}
	s := &Sandbox{id: "pod", cfg: config.Default(), cgroup: rec, vmMiB: 256, cpu: map[string]cpuLimit{}}
	last := func() cgroup.Limits { return rec.limits[len(rec.limits)-1] }

	if err := s.SetVMMemory(ctx, 1024); err != nil {
		t.Fatal(err)
	}
	if got, want := last().MemoryBytes, int64(1024+384)<<20; got != want {
		t.Errorf("memory limit after resize %d, want %d", got, want)
	}
	// The pod's sandbox container asks for nothing and does not count.
	s.setContainerCPU(ctx, "pod", nil, false)
	if l := last(); l.CPUQuotaUsec != 0 {
		t.Errorf("quota %d with no app container", l.CPUQuotaUsec)
	}
	half := &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000), Shares: u64(512)}}
	quarter := &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(5000), Period: u64(20000), Shares: u64(256)}}
	s.setContainerCPU(ctx, "a", half, false)
	s.setContainerCPU(ctx, "b", quarter, false)
	if l := last(); l.CPUQuotaUsec != 75000 || l.CPUPeriodUsec != 100000 || l.CPUShares != 768 {
		t.Errorf("two limited containers: %+v, want 0.75 CPU and 768 shares", l)
	}
	s.setContainerCPU(ctx, "c", &specs.LinuxResources{}, false)
	if l := last(); l.CPUQuotaUsec != 0 {
		t.Errorf("an unlimited container leaves the pod limited: %+v", l)
	}
	s.setContainerCPU(ctx, "c", nil, true)
	if l := last(); l.CPUQuotaUsec != 75000 || l.MemoryBytes != int64(1024+384)<<20 {
		t.Errorf("after the unlimited container left: %+v", l)
	}
}

// TestPlainContainerQuotaCounts: a container that is its own sandbox
// (ctr run, no CRI) limits the sandbox with its quota.
func TestPlainContainerQuotaCounts(t *testing.T) {
	rec := &recordingCgroup{}
	s := &Sandbox{id: "solo", cfg: config.Default(), cgroup: rec, vmMiB: 256, cpu: map[string]cpuLimit{}}
	s.setContainerCPU(context.Background(), "solo", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)}}, false)
	if l := rec.limits[len(rec.limits)-1]; l.CPUQuotaUsec != 50000 || l.CPUPeriodUsec != 100000 {
		t.Errorf("limits %+v, want half a CPU", l)
	}
}

func TestCgroupPath(t *testing.T) {
	cfg := config.Default()
	if got := CgroupPath(cfg, "abc", "/kubepods/pod1/abc"); got != "/berth/abc" {
		t.Errorf("sandbox_cgroup_only: %q", got)
	}
	cfg.Cgroup.SandboxCgroupOnly = false
	if got := CgroupPath(cfg, "abc", "/kubepods/pod1/abc"); got != "/kubepods/pod1/abc" {
		t.Errorf("pod cgroup: %q", got)
	}
	if got := CgroupPath(cfg, "abc", ""); got != "/berth/abc" {
		t.Errorf("no pod cgroup: %q", got)
	}
	cfg.Cgroup.Manager, cfg.Cgroup.Parent, cfg.Cgroup.SandboxCgroupOnly = config.CgroupManagerSystemd, "berth.slice", true
	if got := CgroupPath(cfg, "abc", ""); got != "berth.slice:berth:abc" {
		t.Errorf("systemd: %q", got)
	}
}
