package sandbox

import (
	"os"
	"strconv"
	"strings"
)

// hostMemTotalMiB is the host's MemTotal, 0 when it cannot be read (the
// checks that use it are then skipped).
func hostMemTotalMiB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	return parseMemTotalMiB(string(b))
}

func parseMemTotalMiB(meminfo string) int {
	for _, line := range strings.Split(meminfo, "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				if kib, err := strconv.Atoi(f[0]); err == nil {
					return kib >> 10
				}
			}
		}
	}
	return 0
}
