package agent

import (
	"fmt"
	"slices"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The kubelet and containerd describe a container's resources in the
// host's terms. Two of them name host hardware the guest does not have,
// and libcontainer, applying them as they are, fails the container.

// fitGuestResources adapts the spec's resources to the guest: huge page
// limits (fitHugepageLimits) and cpusets. A cpuset names host CPUs and
// NUMA nodes (the kubelet's static CPU manager pins a Guaranteed pod's
// containers to host CPUs, e.g. "4-5"); the guest's vCPUs are numbered
// from 0 and are not those CPUs, so a host cpuset is not applied in the
// guest, where it would either fail (a CPU the guest lacks) or pin to an
// unrelated vCPU. The container keeps its CFS quota and shares.
func fitGuestResources(res *specs.LinuxResources, guestHugepageSizes []string) error {
	if res == nil {
		return nil
	}
	dropHostCpuset(res.CPU)
	return fitHugepageLimits(res, guestHugepageSizes)
}

// dropHostCpuset clears a cpuset given in host CPUs and nodes.
func dropHostCpuset(cpu *specs.LinuxCPU) {
	if cpu != nil {
		cpu.Cpus, cpu.Mems = "", ""
	}
}

// fitHugepageLimits keeps the spec's huge page limits that the guest can
// apply. The kubelet sends a limit for every huge page size the host has,
// 0 for each size the pod does not ask for (GetHugepageLimitsFromResources),
// so every container a kubelet creates carries them. The guest has its own
// page sizes: none with Berth's kernel, which has no hugetlbfs. A limit of
// 0 for a size the guest lacks already holds, and libcontainer would fail
// writing a hugetlb.<size>.max that does not exist, so it is dropped. A
// limit above 0 asks for huge pages the guest cannot give, and is refused
// rather than let the container start without them.
func fitHugepageLimits(res *specs.LinuxResources, guestSizes []string) error {
	if res == nil || len(res.HugepageLimits) == 0 {
		return nil
	}
	kept := res.HugepageLimits[:0]
	for _, l := range res.HugepageLimits {
		switch {
		case slices.Contains(guestSizes, l.Pagesize):
			kept = append(kept, l)
		case l.Limit == 0:
		default:
			return fmt.Errorf("linux.resources.hugepageLimits: the container asks for %d bytes of %s huge pages, and the guest kernel has no %s pages (sizes it has: %v); Berth does not back pods with huge pages, so remove the pod's hugepages-* resources: %w",
				l.Limit, l.Pagesize, l.Pagesize, guestSizes, errdefs.ErrNotImplemented)
		}
	}
	res.HugepageLimits = kept
	return nil
}
