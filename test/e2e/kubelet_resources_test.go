package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// hostHugepageSizes are the huge page sizes of the host, named as the
// kubelet names them ("2MB", "1GB"): it reads them with the same
// function.
func hostHugepageSizes(t *testing.T) []string {
	t.Helper()
	sizes := cgroups.HugePageSizes()
	if len(sizes) == 0 {
		t.Fatal("the host has no huge page sizes: a kubelet here would send no huge page limits, so this test would show nothing")
	}
	return sizes
}

// kubeletShapedSpec is containerd's default spec with the resources a
// kubelet on a cgroup v2 node sends for a container with a 64 MiB memory
// limit and half a CPU: a huge page limit for each of the host's sizes (0
// unless asked for: GetHugepageLimitsFromResources), the unified keys of
// kubelet 1.32 (the cgroup is OOM-killed as a whole) and of NoSwap, and,
// under the static CPU manager on an 8-CPU node, the host CPUs it is
// pinned to. containerd's CRI passes them on as they are (this host has
// no hugetlb controller, so its CRI would drop the huge page limits: the
// spec is given to ctr whole instead).
func kubeletShapedSpec(t *testing.T, hugepages map[string]uint64, args ...string) string {
	t.Helper()
	var spec specs.Spec
	if err := json.Unmarshal([]byte(mustCtr(t, "oci", "spec")), &spec); err != nil {
		t.Fatalf("ctr oci spec: %v", err)
	}
	spec.Root = &specs.Root{Path: env.rootfs, Readonly: true}
	spec.Process.Args = args
	spec.Process.Env = []string{"PATH=/bin:/sbin:/usr/bin"}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}})
	limit, quota, period, shares := int64(64<<20), int64(50000), uint64(100000), uint64(512)
	res := &specs.LinuxResources{
		Memory:  &specs.LinuxMemory{Limit: &limit},
		CPU:     &specs.LinuxCPU{Quota: &quota, Period: &period, Shares: &shares, Cpus: "4-5", Mems: "0"},
		Unified: map[string]string{"memory.oom.group": "1", "memory.swap.max": "0"},
	}
	for _, size := range hostHugepageSizes(t) {
		res.HugepageLimits = append(res.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: size, Limit: hugepages[size]})
	}
	spec.Linux.Resources = res
	b, err := json.Marshal(&spec)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCtrKubeletShapedResourcesApplyInTheGuest: a container with the
// resources a kubelet sends starts, and its cgroup in the guest has them.
// Before the agent fitted them to the guest, every such container failed
// to start: the huge page limit of 0 the kubelet sends for each of the
// host's sizes (the guest has no hugetlbfs: "openat2
// .../hugetlb.2MB.max: no such file or directory"), and a cpuset of host
// CPUs the guest does not have ("numerical result out of range"). A
// container that does ask for huge pages is refused, the setting named.
func TestCtrKubeletShapedResourcesApplyInTheGuest(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	probe := "cd /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup) && echo $(cat memory.max memory.swap.max memory.oom.group cpu.max cpu.weight)"
	r := ctr(t, "run", "--rm", "--runtime", berthRuntime, "--config", kubeletShapedSpec(t, nil, "sh", "-c", probe), "kubelet-shaped")
	if r.code != 0 {
		cleanupTask(t, "kubelet-shaped")
		t.Fatalf("exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	// cpu.weight 59 is 512 shares converted as runc 1.5 converts them.
	if got, want := strings.TrimSpace(r.stdout), "67108864 0 1 50000 100000 59"; got != want {
		t.Errorf("the container's cgroup in the guest: %q, want %q", got, want)
	}

	size := hostHugepageSizes(t)[0]
	r = ctr(t, "run", "--rm", "--runtime", berthRuntime, "--config", kubeletShapedSpec(t, map[string]uint64{size: 4 << 20}, "true"), "kubelet-hugepages")
	cleanupTask(t, "kubelet-hugepages")
	if r.code == 0 || !strings.Contains(r.stderr, "hugepages") || !strings.Contains(r.stderr, size) {
		t.Errorf("a container asking for %s huge pages the guest lacks: exit %d, stderr %q; want a failure naming the hugepages resources", size, r.code, r.stderr)
	}
}
