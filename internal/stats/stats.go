// Package stats turns the agent's cgroup readings into containerd's metrics
// types, so `ctr task metrics`, CRI's ContainerStats and the kubelet read
// Berth containers exactly as they read runc containers. It does no I/O.
//
// The working set (what the kubelet compares with the memory limit to
// decide evictions) is computed by containerd's CRI plugin from these
// metrics: usage - inactive_file on cgroup v2, usage - total_inactive_file
// on v1. Filling MemoryStat.InactiveFile from the guest's memory.stat is
// therefore what keeps a pod that fills its page cache from looking like it
// is about to be OOM-killed (seed 003). WorkingSet here is the same formula
// for Berth's own reports.
package stats

import (
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// CgroupV2Metrics converts a guest cgroup v2 reading.
func CgroupV2Metrics(r *api.StatsResponse) *v2.Metrics {
	ms := r.GetMemoryStat()
	m := &v2.Metrics{
		Pids: &v2.PidsStat{Current: r.PidsCurrent, Limit: r.PidsLimit},
		CPU: &v2.CPUStat{
			UsageUsec: r.CpuUsageUsec, UserUsec: r.CpuUserUsec, SystemUsec: r.CpuSystemUsec,
			NrPeriods: r.CpuNrPeriods, NrThrottled: r.CpuNrThrottled, ThrottledUsec: r.CpuThrottledUsec,
		},
		Memory: &v2.MemoryStat{
			Anon: ms["anon"], File: ms["file"], KernelStack: ms["kernel_stack"], Slab: ms["slab"],
			Sock: ms["sock"], Shmem: ms["shmem"], FileMapped: ms["file_mapped"], FileDirty: ms["file_dirty"],
			FileWriteback: ms["file_writeback"], AnonThp: ms["anon_thp"],
			InactiveAnon: ms["inactive_anon"], ActiveAnon: ms["active_anon"],
			InactiveFile: ms["inactive_file"], ActiveFile: ms["active_file"], Unevictable: ms["unevictable"],
			SlabReclaimable: ms["slab_reclaimable"], SlabUnreclaimable: ms["slab_unreclaimable"],
			Pgfault: ms["pgfault"], Pgmajfault: ms["pgmajfault"],
			WorkingsetRefault: ms["workingset_refault"], WorkingsetActivate: ms["workingset_activate"],
			WorkingsetNodereclaim: ms["workingset_nodereclaim"], Pgrefill: ms["pgrefill"], Pgscan: ms["pgscan"],
			Pgsteal: ms["pgsteal"], Pgactivate: ms["pgactivate"], Pgdeactivate: ms["pgdeactivate"],
			Pglazyfree: ms["pglazyfree"], Pglazyfreed: ms["pglazyfreed"],
			ThpFaultAlloc: ms["thp_fault_alloc"], ThpCollapseAlloc: ms["thp_collapse_alloc"],
			Usage: r.MemoryUsageBytes, UsageLimit: r.MemoryLimitBytes, MaxUsage: r.MemoryMaxUsageBytes,
		},
		MemoryEvents: &v2.MemoryEvents{Max: r.MemoryFailcnt, Oom: r.MemoryOomEvents, OomKill: r.MemoryOomKillEvents},
	}
	if len(r.Io) > 0 {
		m.Io = &v2.IOStat{}
		for _, e := range r.Io {
			m.Io.Usage = append(m.Io.Usage, &v2.IOEntry{Major: e.Major, Minor: e.Minor, Rbytes: e.Rbytes, Wbytes: e.Wbytes, Rios: e.Rios, Wios: e.Wios})
		}
	}
	return m
}

// WorkingSet returns usage minus inactive file pages, never below zero:
// the formula containerd's CRI plugin (getWorkingSet, getWorkingSetV2)
// and cAdvisor apply to runc containers: usage - inactive_file on cgroup
// v2, usage - total_inactive_file on v1. It is the one place Berth
// computes it (the metrics endpoint); containerd computes its own from
// the metrics above, with the same result.
func WorkingSet(r *api.StatsResponse) uint64 {
	key := "inactive_file"
	if r.CgroupVersion == 1 {
		key = "total_inactive_file"
	}
	inactive := r.GetMemoryStat()[key]
	if inactive >= r.MemoryUsageBytes {
		return 0
	}
	return r.MemoryUsageBytes - inactive
}
