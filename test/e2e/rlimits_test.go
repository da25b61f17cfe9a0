package e2e

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// limitsScript prints the limits that differ between the host and a
// small guest's defaults, one "limit <name> <soft> <hard>" line each; the
// last one ends in "signals".
const limitsScript = `grep -E "^Max (stack size|core file size|processes|open files|locked memory|pending signals) " /proc/self/limits | tr -s " " | sed "s/^Max /limit /; s/ *$//"`

// TestCRIContainerGetsTheLimitsRuncWould: a container's init and its
// execs get the resource limits a runc container gets where the spec
// sets none, the ones containerd runs with: the same number of processes
// per user (a JVM's threads count against it), of open files, of locked
// memory. Berth's containers used to get the guest kernel's defaults for
// a 256 MiB VM: 937 processes, 1024 open files.
//
// The one allowed difference is RLIMIT_NOFILE's soft limit, which may be
// higher under Berth: Go raises its own soft limit to the hard one, and
// only runc's processes get the original back.
func TestCRIContainerGetsTheLimitsRuncWould(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	got := map[string]map[string][2]uint64{}
	for _, handler := range []string{"runc", criHandler} {
		t.Run(handler, func(t *testing.T) {
			pod := c.runPodWith(t, "rlimits-"+handler, handler, nil)
			defer c.removePod(t, pod.id)
			id, _ := c.createContainer(t, pod, "limits", "sh", "-c", limitsScript+"; exec sleep 100000")
			c.startContainer(t, id)
			waitLogLine(t, filepath.Join(pod.logDir, "limits.log"), "signals", time.Minute)
			initOut, _ := stdoutLines(filepath.Join(pod.logDir, "limits.log"))
			got[handler+" init"] = parseLimits(t, strings.Join(initOut, "\n"))
			got[handler+" exec"] = parseLimits(t, c.execOut(t, id, "sh", "-c", limitsScript))
		})
	}
	for _, proc := range []string{"init", "exec"} {
		runc, berth := got["runc "+proc], got[criHandler+" "+proc]
		if len(runc) != 6 || len(berth) != 6 {
			t.Fatalf("%s: limits read: runc %v, berth %v; want 6 each", proc, runc, berth)
		}
		for name, want := range runc {
			have := berth[name]
			softOK := have[0] == want[0] || (name == "open files" && have[0] >= want[0] && have[0] <= have[1])
			if !softOK || have[1] != want[1] {
				t.Errorf("%s: %s soft:hard %d:%d under Berth, %d:%d under runc", proc, name, have[0], have[1], want[0], want[1])
			}
		}
	}
}

// parseLimits reads limitsScript's lines into name -> {soft, hard}
// ("unlimited" as the maximum uint64).
func parseLimits(t *testing.T, out string) map[string][2]uint64 {
	t.Helper()
	limits := map[string][2]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "limit" {
			continue
		}
		// limit <words of the name> <soft> <hard> <unit>
		n := len(f)
		name := strings.Join(f[1:n-3], " ")
		var v [2]uint64
		for i, s := range f[n-3 : n-1] {
			if s == "unlimited" {
				v[i] = ^uint64(0)
			} else if x, err := strconv.ParseUint(s, 10, 64); err == nil {
				v[i] = x
			} else {
				t.Fatalf("limit line %q: %v", line, err)
			}
		}
		limits[name] = v
	}
	return limits
}
