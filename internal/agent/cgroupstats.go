package agent

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// readCgroup2Stats reads a container's cgroup v2 directory into a
// StatsResponse. Files a kernel does not have (memory.peak before 5.19, a
// controller not enabled) are skipped, not errors: the host reports what
// the guest kernel knows.
func readCgroup2Stats(dir string) (*api.StatsResponse, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("container cgroup %s: %w", dir, err)
	}
	r := &api.StatsResponse{CgroupVersion: 2}
	read := func(name string) (string, bool) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", false
		}
		return strings.TrimSpace(string(b)), true
	}
	// memory.stat before memory.current: the host's working set is usage
	// minus inactive_file, and a container that is still paging in (its
	// first seconds) grows between the two reads, each a few ms under TCG.
	// Read in this order, usage already holds every page the stat counted;
	// the other order gave a working set of 0 (e2e TestCRIContainerStats).
	if v, ok := read("memory.stat"); ok {
		r.MemoryStat = parseFlatKeyed(strings.NewReader(v))
	}
	if v, ok := read("memory.current"); ok {
		r.MemoryUsageBytes = parseCgroupValue(v)
	}
	if v, ok := read("memory.max"); ok {
		r.MemoryLimitBytes = parseCgroupValue(v)
	}
	if v, ok := read("memory.peak"); ok {
		r.MemoryMaxUsageBytes = parseCgroupValue(v)
	}
	if v, ok := read("memory.events"); ok {
		ev := parseFlatKeyed(strings.NewReader(v))
		r.MemoryOomEvents, r.MemoryOomKillEvents = ev["oom"], ev["oom_kill"]
		r.MemoryFailcnt = ev["max"]
	}
	if v, ok := read("cpu.stat"); ok {
		cs := parseFlatKeyed(strings.NewReader(v))
		r.CpuUsageUsec, r.CpuUserUsec, r.CpuSystemUsec = cs["usage_usec"], cs["user_usec"], cs["system_usec"]
		r.CpuNrPeriods, r.CpuNrThrottled, r.CpuThrottledUsec = cs["nr_periods"], cs["nr_throttled"], cs["throttled_usec"]
	}
	if v, ok := read("pids.current"); ok {
		r.PidsCurrent = parseCgroupValue(v)
	}
	if v, ok := read("pids.max"); ok {
		r.PidsLimit = parseCgroupValue(v)
	}
	if v, ok := read("io.stat"); ok {
		r.Io = parseIOStat(strings.NewReader(v))
	}
	return r, nil
}

// parseCgroupValue parses a single-value cgroup file; "max" is the largest
// value, as containerd reports an unlimited cgroup.
func parseCgroupValue(s string) uint64 {
	if s == "max" {
		return math.MaxUint64
	}
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// parseFlatKeyed parses "key value" lines (memory.stat, cpu.stat,
// memory.events).
func parseFlatKeyed(r io.Reader) map[string]uint64 {
	out := map[string]uint64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// parseIOStat parses io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...".
func parseIOStat(r io.Reader) []*api.IOEntry {
	var out []*api.IOEntry
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		maj, min, ok := strings.Cut(f[0], ":")
		if !ok {
			continue
		}
		e := &api.IOEntry{}
		e.Major, _ = strconv.ParseUint(maj, 10, 64)
		e.Minor, _ = strconv.ParseUint(min, 10, 64)
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseUint(v, 10, 64)
			switch k {
			case "rbytes":
				e.Rbytes = n
			case "wbytes":
				e.Wbytes = n
			case "rios":
				e.Rios = n
			case "wios":
				e.Wios = n
			}
		}
		out = append(out, e)
	}
	return out
}

// userHZ is the unit of cpuacct.stat (USER_HZ, 100 on every Linux ABI
// Berth's guests run).
const userHZ = 100

// readCgroup1Stats reads a container's cgroup v1 directories (one per
// controller, as libcontainer reports them) into a StatsResponse, for a
// guest booted with cgroup v1. memory.stat is passed on verbatim, so the
// host sees total_inactive_file, the key v1's working set is computed
// from.
func readCgroup1Stats(paths map[string]string) (*api.StatsResponse, error) {
	mem := paths["memory"]
	if mem == "" {
		return nil, fmt.Errorf("container has no v1 memory cgroup")
	}
	if _, err := os.Stat(mem); err != nil {
		return nil, fmt.Errorf("container cgroup %s: %w", mem, err)
	}
	r := &api.StatsResponse{CgroupVersion: 1}
	read := func(ctrl, name string) (string, bool) {
		dir := paths[ctrl]
		if dir == "" {
			return "", false
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", false
		}
		return strings.TrimSpace(string(b)), true
	}
	if v, ok := read("memory", "memory.usage_in_bytes"); ok {
		r.MemoryUsageBytes = parseCgroupValue(v)
	}
	if v, ok := read("memory", "memory.limit_in_bytes"); ok {
		r.MemoryLimitBytes = parseCgroupValue(v)
	}
	if v, ok := read("memory", "memory.max_usage_in_bytes"); ok {
		r.MemoryMaxUsageBytes = parseCgroupValue(v)
	}
	if v, ok := read("memory", "memory.failcnt"); ok {
		r.MemoryFailcnt = parseCgroupValue(v)
	}
	if v, ok := read("memory", "memory.stat"); ok {
		r.MemoryStat = parseFlatKeyed(strings.NewReader(v))
	}
	if v, ok := read("memory", "memory.oom_control"); ok {
		oc := parseFlatKeyed(strings.NewReader(v))
		r.MemoryOomKillEvents = oc["oom_kill"]
		r.MemoryOomEvents = oc["oom_kill"]
	}
	// cpuacct.usage is in nanoseconds, cpuacct.stat in USER_HZ ticks.
	if v, ok := read("cpuacct", "cpuacct.usage"); ok {
		r.CpuUsageUsec = parseCgroupValue(v) / 1000
	}
	if v, ok := read("cpuacct", "cpuacct.stat"); ok {
		st := parseFlatKeyed(strings.NewReader(v))
		r.CpuUserUsec = st["user"] * 1000000 / userHZ
		r.CpuSystemUsec = st["system"] * 1000000 / userHZ
	}
	if v, ok := read("cpu", "cpu.stat"); ok {
		cs := parseFlatKeyed(strings.NewReader(v))
		r.CpuNrPeriods, r.CpuNrThrottled, r.CpuThrottledUsec = cs["nr_periods"], cs["nr_throttled"], cs["throttled_time"]/1000
	}
	if v, ok := read("pids", "pids.current"); ok {
		r.PidsCurrent = parseCgroupValue(v)
	}
	if v, ok := read("pids", "pids.max"); ok {
		r.PidsLimit = parseCgroupValue(v)
	}
	bytes, _ := read("blkio", "blkio.throttle.io_service_bytes_recursive")
	ios, _ := read("blkio", "blkio.throttle.io_serviced_recursive")
	r.Io = parseBlkio(bytes, ios)
	return r, nil
}

// parseBlkio merges v1's per-device byte and operation counts ("MAJ:MIN
// Read N" lines, then a "Total N") into one entry per device.
func parseBlkio(bytes, ios string) []*api.IOEntry {
	byDev := map[string]*api.IOEntry{}
	var order []string
	add := func(text string, isBytes bool) {
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 {
				continue
			}
			maj, min, ok := strings.Cut(f[0], ":")
			if !ok {
				continue
			}
			e := byDev[f[0]]
			if e == nil {
				e = &api.IOEntry{}
				e.Major, _ = strconv.ParseUint(maj, 10, 64)
				e.Minor, _ = strconv.ParseUint(min, 10, 64)
				byDev[f[0]] = e
				order = append(order, f[0])
			}
			n, _ := strconv.ParseUint(f[2], 10, 64)
			switch {
			case f[1] == "Read" && isBytes:
				e.Rbytes = n
			case f[1] == "Write" && isBytes:
				e.Wbytes = n
			case f[1] == "Read":
				e.Rios = n
			case f[1] == "Write":
				e.Wios = n
			}
		}
	}
	add(bytes, true)
	add(ios, false)
	out := make([]*api.IOEntry, 0, len(order))
	for _, d := range order {
		out = append(out, byDev[d])
	}
	return out
}
