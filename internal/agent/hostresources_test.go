package agent

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestKubeletHugepageLimitsFitTheGuest: the kubelet's limit of 0 for each of
// the host's page sizes must not fail a container in a guest that has none
// of them, a size the guest has keeps its limit, and a pod that asks for
// huge pages the guest lacks is refused, naming the setting.
func TestKubeletHugepageLimitsFitTheGuest(t *testing.T) {
	kubelet := func(twoMB uint64) *specs.LinuxResources {
		return &specs.LinuxResources{HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: twoMB}, {Pagesize: "1GB", Limit: 0}}}
	}
	res := kubelet(0)
	if err := fitHugepageLimits(res, nil); err != nil || len(res.HugepageLimits) != 0 {
		t.Errorf("no guest sizes, limits of 0: err %v, kept %v", err, res.HugepageLimits)
	}
	res = kubelet(4 << 20)
	if err := fitHugepageLimits(res, []string{"2MB"}); err != nil || len(res.HugepageLimits) != 1 || res.HugepageLimits[0].Limit != 4<<20 {
		t.Errorf("guest has 2MB: err %v, kept %v", err, res.HugepageLimits)
	}
	err := fitHugepageLimits(kubelet(4<<20), nil)
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "hugepages-*") || !strings.Contains(err.Error(), "2MB") {
		t.Errorf("huge pages asked of a guest without them: %v", err)
	}
	if err := fitHugepageLimits(nil, nil); err != nil {
		t.Errorf("no resources: %v", err)
	}
}

// TestHostCpusetIsNotAppliedInTheGuest: the kubelet's static CPU manager
// pins containers to host CPUs ("4-5" on an 8-CPU node); in a guest of one
// vCPU libcontainer failed writing that cpuset. The guest keeps the
// quota and drops the cpuset, at create and at update.
func TestHostCpusetIsNotAppliedInTheGuest(t *testing.T) {
	quota, period := int64(50000), uint64(100000)
	res := &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "4-5", Mems: "1", Quota: &quota, Period: &period}}
	if err := fitGuestResources(res, nil); err != nil {
		t.Fatal(err)
	}
	if res.CPU.Cpus != "" || res.CPU.Mems != "" || *res.CPU.Quota != quota {
		t.Errorf("create: cpus %q mems %q quota %d", res.CPU.Cpus, res.CPU.Mems, *res.CPU.Quota)
	}
	r := &cgroups.Resources{}
	applyResources(r, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "4-5", Mems: "1", Quota: &quota}})
	if r.CpusetCpus != "" || r.CpusetMems != "" || r.CpuQuota != quota {
		t.Errorf("update: cpus %q mems %q quota %d", r.CpusetCpus, r.CpusetMems, r.CpuQuota)
	}
}
