package stats

import (
	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// CgroupV1Metrics converts a reading from a guest booted with cgroup v1.
// containerd's CRI plugin computes the working set from it as
// Memory.Usage.Usage - Memory.TotalInactiveFile, so TotalInactiveFile
// must carry the guest's total_inactive_file (not inactive_file, which
// leaves out child cgroups). CPU figures are nanoseconds in v1's types.
func CgroupV1Metrics(r *api.StatsResponse) *v1.Metrics {
	ms := r.GetMemoryStat()
	return &v1.Metrics{
		Pids: &v1.PidsStat{Current: r.PidsCurrent, Limit: r.PidsLimit},
		CPU: &v1.CPUStat{
			Usage: &v1.CPUUsage{Total: r.CpuUsageUsec * 1000, User: r.CpuUserUsec * 1000, Kernel: r.CpuSystemUsec * 1000},
			Throttling: &v1.Throttle{
				Periods: r.CpuNrPeriods, ThrottledPeriods: r.CpuNrThrottled, ThrottledTime: r.CpuThrottledUsec * 1000,
			},
		},
		Memory: &v1.MemoryStat{
			Cache: ms["cache"], RSS: ms["rss"], RSSHuge: ms["rss_huge"], MappedFile: ms["mapped_file"],
			Dirty: ms["dirty"], Writeback: ms["writeback"], PgPgIn: ms["pgpgin"], PgPgOut: ms["pgpgout"],
			PgFault: ms["pgfault"], PgMajFault: ms["pgmajfault"],
			InactiveAnon: ms["inactive_anon"], ActiveAnon: ms["active_anon"],
			InactiveFile: ms["inactive_file"], ActiveFile: ms["active_file"], Unevictable: ms["unevictable"],
			HierarchicalMemoryLimit: ms["hierarchical_memory_limit"], HierarchicalSwapLimit: ms["hierarchical_memsw_limit"],
			TotalCache: ms["total_cache"], TotalRSS: ms["total_rss"], TotalRSSHuge: ms["total_rss_huge"],
			TotalMappedFile: ms["total_mapped_file"], TotalDirty: ms["total_dirty"], TotalWriteback: ms["total_writeback"],
			TotalPgPgIn: ms["total_pgpgin"], TotalPgPgOut: ms["total_pgpgout"],
			TotalPgFault: ms["total_pgfault"], TotalPgMajFault: ms["total_pgmajfault"],
			TotalInactiveAnon: ms["total_inactive_anon"], TotalActiveAnon: ms["total_active_anon"],
			TotalInactiveFile: ms["total_inactive_file"], TotalActiveFile: ms["total_active_file"],
			TotalUnevictable: ms["total_unevictable"],
			Usage: &v1.MemoryEntry{
				Usage: r.MemoryUsageBytes, Limit: r.MemoryLimitBytes, Max: r.MemoryMaxUsageBytes, Failcnt: r.MemoryFailcnt,
			},
		},
		MemoryOomControl: &v1.MemoryOomControl{OomKill: r.MemoryOomKillEvents},
		Blkio:            blkio(r.Io),
	}
}

// blkio lays the per-device counts out as v1's recursive service stats,
// one entry per device and direction, as containerd reads them.
func blkio(io []*api.IOEntry) *v1.BlkIOStat {
	if len(io) == 0 {
		return nil
	}
	b := &v1.BlkIOStat{}
	for _, e := range io {
		b.IoServiceBytesRecursive = append(b.IoServiceBytesRecursive,
			&v1.BlkIOEntry{Op: "Read", Major: e.Major, Minor: e.Minor, Value: e.Rbytes},
			&v1.BlkIOEntry{Op: "Write", Major: e.Major, Minor: e.Minor, Value: e.Wbytes})
		b.IoServicedRecursive = append(b.IoServicedRecursive,
			&v1.BlkIOEntry{Op: "Read", Major: e.Major, Minor: e.Minor, Value: e.Rios},
			&v1.BlkIOEntry{Op: "Write", Major: e.Major, Minor: e.Minor, Value: e.Wios})
	}
	return b
}
