package stats

import (
	"testing"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

func TestWorkingSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *api.StatsResponse
		want uint64
	}{
		{"v2 page cache is not working set", &api.StatsResponse{CgroupVersion: 2, MemoryUsageBytes: 216 << 20,
			MemoryStat: map[string]uint64{"inactive_file": 190 << 20, "total_inactive_file": 1}}, 26 << 20},
		{"v1 uses total_inactive_file", &api.StatsResponse{CgroupVersion: 1, MemoryUsageBytes: 100,
			MemoryStat: map[string]uint64{"total_inactive_file": 30, "inactive_file": 99}}, 70},
		{"never below zero", &api.StatsResponse{CgroupVersion: 2, MemoryUsageBytes: 10,
			MemoryStat: map[string]uint64{"inactive_file": 20}}, 0},
	} {
		if got := WorkingSet(tc.r); got != tc.want {
			t.Errorf("%s: WorkingSet = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestCgroupV2MetricsKeepsUserAndSystemApart(t *testing.T) {
	m := CgroupV2Metrics(&api.StatsResponse{CpuUsageUsec: 30, CpuUserUsec: 20, CpuSystemUsec: 10,
		MemoryUsageBytes: 5, MemoryStat: map[string]uint64{"inactive_file": 3, "anon": 2}})
	if m.CPU.UserUsec != 20 || m.CPU.SystemUsec != 10 || m.CPU.UsageUsec != 30 {
		t.Errorf("cpu %+v", m.CPU)
	}
	if m.Memory.Usage != 5 || m.Memory.InactiveFile != 3 || m.Memory.Anon != 2 {
		t.Errorf("memory %+v", m.Memory)
	}
}

// TestCgroupV1Metrics: what containerd's CRI plugin reads from v1 metrics
// gives the same working set as WorkingSet, and CPU is in nanoseconds
// with user and kernel apart.
func TestCgroupV1Metrics(t *testing.T) {
	r := &api.StatsResponse{
		CgroupVersion: 1, MemoryUsageBytes: 216 << 20, MemoryLimitBytes: 1 << 30, MemoryMaxUsageBytes: 220 << 20,
		MemoryStat: map[string]uint64{
			"inactive_file": 1 << 20, "total_inactive_file": 190 << 20, "total_rss": 20 << 20,
			"total_cache": 196 << 20, "cache": 196 << 20,
		},
		CpuUsageUsec: 30, CpuUserUsec: 20, CpuSystemUsec: 10, PidsCurrent: 3,
		Io: []*api.IOEntry{{Major: 254, Rbytes: 4096, Wbytes: 8192, Rios: 1, Wios: 2}},
	}
	m := CgroupV1Metrics(r)
	if b := m.Blkio.IoServiceBytesRecursive; len(b) != 2 || b[0].Op != "Read" || b[0].Value != 4096 || b[1].Value != 8192 || m.Blkio.IoServicedRecursive[1].Value != 2 {
		t.Errorf("blkio %+v", m.Blkio)
	}
	// containerd's getWorkingSet for v1.
	ws := uint64(0)
	if m.Memory.TotalInactiveFile < m.Memory.Usage.Usage {
		ws = m.Memory.Usage.Usage - m.Memory.TotalInactiveFile
	}
	if ws != 26<<20 || ws != WorkingSet(r) {
		t.Errorf("containerd's v1 working set %d, WorkingSet %d, want %d", ws, WorkingSet(r), 26<<20)
	}
	if m.Memory.Usage.Limit != 1<<30 || m.Memory.Usage.Max != 220<<20 || m.Memory.TotalRSS != 20<<20 || m.Memory.Cache != 196<<20 {
		t.Errorf("memory %+v", m.Memory)
	}
	if m.CPU.Usage.Total != 30000 || m.CPU.Usage.User != 20000 || m.CPU.Usage.Kernel != 10000 {
		t.Errorf("cpu %+v", m.CPU.Usage)
	}
	if m.Pids.Current != 3 {
		t.Errorf("pids %+v", m.Pids)
	}
}

// TestCgroupV2WorkingSetMatchesContainerd: containerd's getWorkingSetV2
// over the converted metrics equals WorkingSet, for the seed's page-cache
// case and for anonymous memory.
func TestCgroupV2WorkingSetMatchesContainerd(t *testing.T) {
	for _, r := range []*api.StatsResponse{
		{CgroupVersion: 2, MemoryUsageBytes: 216 << 20, MemoryStat: map[string]uint64{"inactive_file": 190 << 20, "file": 200 << 20}},
		{CgroupVersion: 2, MemoryUsageBytes: 101 << 20, MemoryStat: map[string]uint64{"anon": 100 << 20}},
		{CgroupVersion: 2, MemoryUsageBytes: 1, MemoryStat: map[string]uint64{"inactive_file": 5}},
	} {
		m := CgroupV2Metrics(r)
		ws := uint64(0)
		if m.Memory.InactiveFile < m.Memory.Usage {
			ws = m.Memory.Usage - m.Memory.InactiveFile
		}
		if ws != WorkingSet(r) {
			t.Errorf("%v: containerd's v2 working set %d, WorkingSet %d", r.MemoryStat, ws, WorkingSet(r))
		}
	}
}
