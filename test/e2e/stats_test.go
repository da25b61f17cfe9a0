package e2e

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The stats tests run one workload under runc and under Berth and compare
// what CRI's ContainerStats (what the kubelet reads) reports for each
// (seed 003): Berth's working set must be computed like runc's, usage
// minus inactive file pages, so that a pod filling its page cache does not
// look like it is about to be OOM-killed.

const (
	runcHandler = "runc"
	// statsVMMiB sizes the Berth pod's VM so that a 200 MB page cache fits.
	statsVMMiB = 512
)

// memSample is one ContainerStats reading.
type memSample struct{ usage, workingSet uint64 }

func (m memSample) String() string {
	return fmt.Sprintf("usage %.1f MiB, working set %.1f MiB", mib(m.usage), mib(m.workingSet))
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// statsWorkload runs script in a fresh pod of handler, waits for it to
// print "ready", lets memory settle and returns the container and a
// ContainerStats sample. The pod is removed by *cleanup, which the caller
// defers after its leak check so that it runs first.
func statsWorkload(t *testing.T, c *criClient, cleanup *[]func(), handler, name, script string) (string, memSample) {
	t.Helper()
	var ann map[string]string
	if handler == criHandler {
		ann = map[string]string{"io.berth.config.hypervisor.default_memory": strconv.Itoa(statsVMMiB)}
	}
	pod := c.runPodWith(t, name, handler, ann)
	*cleanup = append(*cleanup, func() { c.removePod(t, pod.id); removeRuncPodCgroups(pod) })
	id, _ := c.createContainer(t, pod, name, "sh", "-c", script)
	c.startContainer(t, id)
	waitLogLine(t, filepath.Join(pod.logDir, name+".log"), "ready", 3*time.Minute)
	// Let the writeback finish and the numbers settle.
	time.Sleep(3 * time.Second)
	return id, containerMemory(t, c, id)
}

func containerMemory(t *testing.T, c *criClient, id string) memSample {
	t.Helper()
	resp, err := c.rt.ContainerStats(criCtx(t, time.Minute), &cri.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStats %s: %v", id, err)
	}
	m := resp.GetStats().GetMemory()
	if m.GetUsageBytes() == nil || m.GetWorkingSetBytes() == nil {
		t.Fatalf("ContainerStats %s: no memory figures: %+v", id, m)
	}
	return memSample{usage: m.UsageBytes.Value, workingSet: m.WorkingSetBytes.Value}
}

// removeRuncPodCgroups removes the pod-level cgroups runc created for the
// pod's CgroupParent, and its parents once empty (the kubelet would own
// them); Berth never creates them (sandbox_cgroup_only = true). rmdir only
// removes empty cgroups, so nobody else's can go.
func removeRuncPodCgroups(pod *criPod) {
	mounts, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, m := range append(mounts, "/sys/fs/cgroup") {
		for p := pod.config.Linux.CgroupParent; p != "/" && p != "."; p = filepath.Dir(p) {
			os.Remove(filepath.Join(m, p))
		}
	}
}

// guestMemory reads the container's own memory.current and memory.stat
// from inside it and returns current and current - inactive_file.
//
// What the container sees: the guest mounts cgroup2 without a cgroup
// namespace for the container, so /sys/fs/cgroup is the guest's root
// (which has memory.stat but no memory.current); the container's own
// cgroup is the path /proc/self/cgroup names below it. The exec'd reader
// runs in that same cgroup.
func guestMemory(t *testing.T, c *criClient, id string) (current, workingSet uint64) {
	t.Helper()
	ex, err := c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id,
		Cmd: []string{"sh", "-c", `d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); cat $d/memory.current; grep '^inactive_file ' $d/memory.stat`}, Timeout: 60})
	if err != nil || ex.ExitCode != 0 {
		t.Fatalf("read the guest cgroup: %v exit %d stdout %q stderr %q", err, ex.GetExitCode(), ex.GetStdout(), ex.GetStderr())
	}
	f := strings.Fields(string(ex.Stdout))
	if len(f) != 3 {
		t.Fatalf("guest cgroup files: %q", ex.Stdout)
	}
	current, _ = strconv.ParseUint(f[0], 10, 64)
	inactive, _ := strconv.ParseUint(f[2], 10, 64)
	if inactive < current {
		workingSet = current - inactive
	}
	return current, workingSet
}

// assertMatchesGuest: the working set CRI reports for a Berth container
// is the guest's memory.current - inactive_file, read right after it.
// The exec'd reader itself costs a little memory, hence the tolerance.
func assertMatchesGuest(t *testing.T, c *criClient, id string) {
	t.Helper()
	s := containerMemory(t, c, id)
	current, ws := guestMemory(t, c, id)
	after := containerMemory(t, c, id)
	t.Logf("guest memory.current %.1f MiB, current - inactive_file %.1f MiB; CRI before %v, after %v", mib(current), mib(ws), s, after)
	const tolerance = 4 << 20
	lo, hi := min(s.workingSet, after.workingSet), max(s.workingSet, after.workingSet)
	if ws+tolerance < lo || ws > hi+tolerance {
		t.Errorf("guest current - inactive_file = %.1f MiB, CRI working set %.1f..%.1f MiB: not the same formula", mib(ws), mib(lo), mib(hi))
	}
}

// TestStatsPageCacheIsNotWorkingSet: a container that only writes a
// 200 MB file has ~200 MB of usage, nearly all of it inactive page cache,
// under runc and under Berth alike.
func TestStatsPageCacheIsNotWorkingSet(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	var cleanup []func()
	defer runAll(&cleanup)
	script := "dd if=/dev/zero of=/data.bin bs=1M count=200 2>/dev/null && sync && echo ready; while true; do sleep 1; done"
	_, runc := statsWorkload(t, c, &cleanup, runcHandler, "dd-runc", script)
	berthID, berth := statsWorkload(t, c, &cleanup, criHandler, "dd-berth", script)
	t.Logf("runc:  %v", runc)
	t.Logf("berth: %v", berth)
	for _, r := range []struct {
		name string
		s    memSample
	}{{"runc", runc}, {"berth", berth}} {
		if r.s.usage < 180<<20 {
			t.Errorf("%s: usage %.1f MiB does not include the 200 MB written", r.name, mib(r.s.usage))
		}
		if r.s.workingSet > r.s.usage/3 {
			t.Errorf("%s: working set %.1f MiB is not far below usage %.1f MiB: page cache counted as working set", r.name, mib(r.s.workingSet), mib(r.s.usage))
		}
	}
	assertMatchesGuest(t, c, berthID)
}

// TestStatsAnonymousMemoryMatchesRunc: ~100 MB of anonymous memory is
// working set; Berth's figure is within 10% of runc's.
func TestStatsAnonymousMemoryMatchesRunc(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	var cleanup []func()
	defer runAll(&cleanup)
	script := `x=$(head -c 100m /dev/zero | tr '\0' x); echo ready; while true; do sleep 1; done`
	_, runc := statsWorkload(t, c, &cleanup, runcHandler, "anon-runc", script)
	berthID, berth := statsWorkload(t, c, &cleanup, criHandler, "anon-berth", script)
	t.Logf("runc:  %v", runc)
	t.Logf("berth: %v", berth)
	if runc.workingSet < 90<<20 {
		t.Fatalf("runc working set %.1f MiB: the workload did not hold 100 MB", mib(runc.workingSet))
	}
	diff := math.Abs(float64(berth.workingSet)-float64(runc.workingSet)) / float64(runc.workingSet)
	t.Logf("berth/runc working set differ by %.1f%%", diff*100)
	if diff > 0.10 {
		t.Errorf("Berth working set %.1f MiB vs runc %.1f MiB: %.1f%% apart, want within 10%%", mib(berth.workingSet), mib(runc.workingSet), diff*100)
	}
	assertMatchesGuest(t, c, berthID)
}

func runAll(fns *[]func()) {
	for i := len(*fns) - 1; i >= 0; i-- {
		(*fns)[i]()
	}
}
