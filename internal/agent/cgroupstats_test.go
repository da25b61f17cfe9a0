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
