package cgroup

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// maxCPU bounds the CPU numbers of a list: cpuset lists come from
// container specs, and "0-4294967295" must not become a four-billion-entry
// set. Linux's NR_CPUS tops out at 8192.
const maxCPU = 8191

// ParseCPUList parses a cpuset list ("0-3,7") into sorted, unique CPU
// numbers; "" is no CPUs.
func ParseCPUList(s string) ([]int, error) {
	seen := map[int]bool{}
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b > maxCPU {
			return nil, fmt.Errorf("cpuset %q: %q is not a CPU number or range within 0-%d", s, part, maxCPU)
		}
		for c := a; c <= b; c++ {
			seen[c] = true
		}
	}
	cpus := make([]int, 0, len(seen))
	for c := range seen {
		cpus = append(cpus, c)
	}
	sort.Ints(cpus)
	return cpus, nil
}

// FormatCPUList writes sorted CPU numbers as a cpuset list of ranges.
func FormatCPUList(cpus []int) string {
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(cpus[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(cpus[j]))
		}
		i = j + 1
	}
	return b.String()
}

// UnionCPULists is the cpuset list of every CPU in any of lists.
func UnionCPULists(lists ...string) (string, error) {
	cpus, err := ParseCPUList(strings.Join(lists, ","))
	if err != nil {
		return "", err
	}
	return FormatCPUList(cpus), nil
}

// cpuMask is systemd's AllowedCPUs for a cpuset list: a little-endian
// bitmask, CPU 0 in the first byte's lowest bit (as runc's systemd driver
// writes it).
func cpuMask(list string) ([]byte, error) {
	cpus, err := ParseCPUList(list)
	if err != nil || len(cpus) == 0 {
		return nil, err
	}
	mask := make([]byte, cpus[len(cpus)-1]/8+1)
	for _, c := range cpus {
		mask[c/8] |= 1 << (c % 8)
	}
	return mask, nil
}
