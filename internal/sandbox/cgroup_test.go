package sandbox

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/config"
)

// recordingCgroup remembers the limits it was given and the pids moved
// into it.
type recordingCgroup struct {
	cgroup.Cgroup
	limits []cgroup.Limits
	added  []int
}

func (r *recordingCgroup) Update(_ context.Context, l cgroup.Limits) error {
	r.limits = append(r.limits, l)
	return nil
}

func (r *recordingCgroup) Add(_ context.Context, pid int) error {
	r.added = append(r.added, pid)
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

// TestSandboxCgroupPinsTheVMMToItsContainersCPUs: the kubelet's static
// CPU manager pins containers to host CPUs; the VMM's cgroup runs on the
// union of the containers' cpusets while every app container has one, and
// on every CPU again once an unpinned container joins.
func TestSandboxCgroupPinsTheVMMToItsContainersCPUs(t *testing.T) {
	ctx := context.Background()
	rec := &recordingCgroup{}
	s := &Sandbox{id: "pod", cfg: config.Default(), cgroup: rec, vmMiB: 256, cpu: map[string]cpuLimit{}}
	last := func() cgroup.Limits { return rec.limits[len(rec.limits)-1] }
	s.setContainerCPU(ctx, "pod", nil, false)
	s.setContainerCPU(ctx, "a", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "4-5"}}, false)
	s.setContainerCPU(ctx, "b", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "2,6"}}, false)
	if got := last().CPUs; got != "2,4-6" {
		t.Errorf("two pinned containers: cpus %q, want 2,4-6", got)
	}
	s.setContainerCPU(ctx, "c", &specs.LinuxResources{}, false)
	if got := last().CPUs; got != "" {
		t.Errorf("with an unpinned container: cpus %q, want every CPU", got)
	}
	s.setContainerCPU(ctx, "c", nil, true)
	s.setContainerCPU(ctx, "b", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "nonsense"}}, false)
	if got := last().CPUs; got != "" {
		t.Errorf("a cpuset that does not parse: cpus %q, want unpinned", got)
	}
	solo := &Sandbox{id: "solo", cfg: config.Default(), cgroup: rec, vmMiB: 256, cpu: map[string]cpuLimit{}}
	solo.setContainerCPU(ctx, "solo", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "1"}}, false)
	if got := last().CPUs; got != "1" {
		t.Errorf("a plain container pinned without a quota: cpus %q, want 1", got)
	}
}

func TestCgroupPath(t *testing.T) {
	cfg := config.Default()
	for _, tc := range []struct {
		manager  string
		only     bool
		spec     string
		want     string
		wantFail bool
	}{
		// No path from the spec (berth run, ctr run): Berth's own parent.
		{config.CgroupManagerCgroupfs, true, "", "/berth/abc", false},
		{config.CgroupManagerCgroupfs, false, "", "/berth/abc", false},
		{config.CgroupManagerSystemd, true, "", "berth.slice:berth:abc", false},
		// The kubelet's pod cgroup: the VM is the sandbox's cgroup...
		{config.CgroupManagerCgroupfs, true, "/kubepods/pod1/abc", "/kubepods/pod1/abc", false},
		// ...or beside the containers' own cgroups, in the pod cgroup.
		{config.CgroupManagerCgroupfs, false, "/kubepods/pod1/abc", "/kubepods/pod1/berth-abc", false},
		// systemd syntax on a cgroupfs host: where systemd would put it.
		{config.CgroupManagerCgroupfs, true, "kubepods-pod1.slice:cri-containerd:abc", "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope", false},
		{config.CgroupManagerSystemd, true, "kubepods-pod1.slice:cri-containerd:abc", "kubepods-pod1.slice:cri-containerd:abc", false},
		{config.CgroupManagerSystemd, false, "kubepods-pod1.slice:cri-containerd:abc", "kubepods-pod1.slice:berth:abc", false},
		// A cgroupfs path cannot name a systemd scope.
		{config.CgroupManagerSystemd, true, "/kubepods/pod1/abc", "", true},
		{config.CgroupManagerCgroupfs, true, "/kubepods/../abc", "", true},
		{config.CgroupManagerCgroupfs, false, "/abc", "/berth-abc", false},
	} {
		cfg.Cgroup.Manager, cfg.Cgroup.SandboxCgroupOnly, cfg.Cgroup.Parent = tc.manager, tc.only, "/berth"
		if tc.manager == config.CgroupManagerSystemd {
			cfg.Cgroup.Parent = "berth.slice"
		}
		got, err := CgroupPath(cfg, "abc", tc.spec)
		if tc.wantFail {
			if err == nil || !strings.Contains(err.Error(), "cgroup") {
				t.Errorf("%s only=%v %q: %q, %v; want an error", tc.manager, tc.only, tc.spec, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s only=%v %q: %q, %v; want %q", tc.manager, tc.only, tc.spec, got, err, tc.want)
		}
	}
}

// virtiofsd forks its sandboxed child once QEMU connects, before the
// sandbox moves it into the cgroup (off the boot's critical path): the
// child must move too, or it would serve the guest outside the pod's
// accounting.
func TestHelperForkedBeforeItsMoveJoinsTheCgroupWithItsChildren(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "sleep 30 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range childPids(cmd.Process.Pid) {
			syscall.Kill(c, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	var children []int
	for deadline := time.Now().Add(5 * time.Second); len(children) == 0; children = childPids(cmd.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatal("the shell forked no child within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A kernel without CONFIG_PROC_CHILDREN has no children files; the
	// scan of every process's parent finds the same.
	if byScan := childPidsByScan(cmd.Process.Pid); !slices.Equal(byScan, children) {
		t.Errorf("children by /proc/*/stat %v, by the children files %v", byScan, children)
	}
	cg := &recordingCgroup{}
	if err := addProcessTree(context.Background(), cg, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	want := append([]int{cmd.Process.Pid}, children...)
	if !slices.Equal(cg.added, want) {
		t.Errorf("moved %v, want the parent then its child %v", cg.added, want)
	}
}
