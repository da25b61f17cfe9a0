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
