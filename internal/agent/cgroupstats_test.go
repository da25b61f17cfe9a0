package agent

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestReadCgroup2Stats(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"memory.current": "226492416\n",
		"memory.max":     "max\n",
		"memory.stat":    "anon 4194304\nfile 209715200\ninactive_file 204800000\nactive_file 4915200\n",
		"memory.events":  "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
		"cpu.stat":       "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
		"pids.current":   "2\n",
		"pids.max":       "max\n",
		"io.stat":        "254:0 rbytes=4096 wbytes=209715200 rios=1 wios=50 dbytes=0 dios=0\n",
	}
	for name, content := range files {
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	r, err := readCgroup2Stats(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.MemoryUsageBytes != 226492416 || r.MemoryLimitBytes != math.MaxUint64 {
		t.Errorf("memory usage/limit = %d/%d", r.MemoryUsageBytes, r.MemoryLimitBytes)
	}
	if r.MemoryStat["inactive_file"] != 204800000 || r.MemoryStat["anon"] != 4194304 {
		t.Errorf("memory.stat = %v", r.MemoryStat)
	}
	if r.MemoryOomEvents != 1 || r.MemoryOomKillEvents != 1 || r.MemoryFailcnt != 3 {
		t.Errorf("events oom=%d oom_kill=%d max=%d", r.MemoryOomEvents, r.MemoryOomKillEvents, r.MemoryFailcnt)
	}
	// user and system must not be swapped (seed 003's neighbour bug).
	if r.CpuUsageUsec != 1500 || r.CpuUserUsec != 1000 || r.CpuSystemUsec != 500 {
		t.Errorf("cpu = %d/%d/%d", r.CpuUsageUsec, r.CpuUserUsec, r.CpuSystemUsec)
	}
	if r.PidsCurrent != 2 || r.PidsLimit != math.MaxUint64 {
		t.Errorf("pids = %d/%d", r.PidsCurrent, r.PidsLimit)
	}
	if len(r.Io) != 1 || r.Io[0].Major != 254 || r.Io[0].Wbytes != 209715200 || r.Io[0].Rios != 1 {
		t.Errorf("io = %v", r.Io)
	}
}

func TestReadCgroup2StatsMissingDir(t *testing.T) {
	if _, err := readCgroup2Stats(filepath.Join(t.TempDir(), "gone")); err == nil {
		t.Fatal("no error for a missing cgroup")
	}
}

func TestReadCgroup1Stats(t *testing.T) {
	root := t.TempDir()
	paths := map[string]string{}
	for ctrl, files := range map[string]map[string]string{
		"memory": {
			"memory.usage_in_bytes":     "226492416\n",
			"memory.limit_in_bytes":     "9223372036854771712\n",
			"memory.max_usage_in_bytes": "230000000\n",
			"memory.failcnt":            "0\n",
			"memory.stat":               "cache 209715200\nrss 4194304\ninactive_file 204800000\ntotal_cache 209715200\ntotal_rss 4194304\ntotal_inactive_file 204800000\ntotal_active_file 4915200\n",
			"memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		},
		"cpuacct": {"cpuacct.usage": "1500000\n", "cpuacct.stat": "user 10\nsystem 5\n"},
		"cpu":     {"cpu.stat": "nr_periods 4\nnr_throttled 1\nthrottled_time 2000\n"},
		"pids":    {"pids.current": "2\n", "pids.max": "max\n"},
		"blkio": {
			"blkio.throttle.io_service_bytes_recursive": "254:0 Read 4096\n254:0 Write 209715200\n254:0 Sync 0\n254:0 Total 209719296\nTotal 209719296\n",
			"blkio.throttle.io_serviced_recursive":      "254:0 Read 1\n254:0 Write 50\n254:0 Total 51\nTotal 51\n",
		},
	} {
		dir := filepath.Join(root, ctrl)
		os.MkdirAll(dir, 0o755)
		for name, content := range files {
			os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
		}
		paths[ctrl] = dir
	}
	r, err := readCgroup1Stats(paths)
	if err != nil {
		t.Fatal(err)
	}
	if r.CgroupVersion != 1 || r.MemoryUsageBytes != 226492416 || r.MemoryMaxUsageBytes != 230000000 {
		t.Errorf("memory %+v", r)
	}
	if r.MemoryStat["total_inactive_file"] != 204800000 {
		t.Errorf("memory.stat = %v", r.MemoryStat)
	}
	if r.MemoryOomKillEvents != 2 {
		t.Errorf("oom_kill = %d", r.MemoryOomKillEvents)
	}
	// 10 and 5 ticks of 10 ms; usage from nanoseconds.
	if r.CpuUsageUsec != 1500 || r.CpuUserUsec != 100000 || r.CpuSystemUsec != 50000 {
		t.Errorf("cpu = %d/%d/%d", r.CpuUsageUsec, r.CpuUserUsec, r.CpuSystemUsec)
	}
	if r.CpuNrPeriods != 4 || r.CpuNrThrottled != 1 || r.CpuThrottledUsec != 2 {
		t.Errorf("throttling = %d/%d/%d", r.CpuNrPeriods, r.CpuNrThrottled, r.CpuThrottledUsec)
	}
	if r.PidsCurrent != 2 || r.PidsLimit != math.MaxUint64 {
		t.Errorf("pids = %d/%d", r.PidsCurrent, r.PidsLimit)
	}
	if len(r.Io) != 1 || r.Io[0].Major != 254 || r.Io[0].Rbytes != 4096 || r.Io[0].Wbytes != 209715200 || r.Io[0].Rios != 1 || r.Io[0].Wios != 50 {
		t.Errorf("io = %v", r.Io)
	}
	if _, err := readCgroup1Stats(map[string]string{}); err == nil {
		t.Error("no error without a memory cgroup")
	}
}
