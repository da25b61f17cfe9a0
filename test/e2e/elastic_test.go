package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/sandbox"
)

// Elastic memory (issue 12), through CRI as the kubelet drives it: a pod
// without limits grows on demand and gives the memory back when idle; a
// pod with a limit is OOM-killed at its limit inside the guest; a grow the
// host cannot serve is refused and the pod stays up.

// hogScript allocates and touches 1.5 GiB of anonymous memory in one
// buffer (dd reads /dev/zero into it) and frees it by exiting. One read()
// of the whole buffer is the hardest case: the guest kernel charges it all
// inside one system call, faster than the host can plug memory.
const hogScript = "dd if=/dev/zero of=/dev/null bs=1500M count=1"

// waitExited waits for a CRI container to exit and returns its status.
func (c *criClient) waitExited(t *testing.T, id string, limit time.Duration) *cri.ContainerStatus {
	t.Helper()
	var status *cri.ContainerStatus
	eventually(t, limit, "container "+id+" exited", func() error {
		st, err := c.rt.ContainerStatus(criCtx(t, time.Minute), &cri.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("ContainerStatus %s: %v", id, err)
		}
		if st.Status.State != cri.ContainerState_CONTAINER_EXITED {
			return fmt.Errorf("container %s still %v", id, st.Status.State)
		}
		status = st.Status
		return nil
	})
	return status
}

// elasticSummary prints an elastic status with its last events, which
// %+v shows as pointers.
func elasticSummary(e *sandbox.ElasticStatus) string {
	if e == nil {
		return "none"
	}
	ev := func(x *sandbox.ElasticEvent) string {
		if x == nil {
			return "none"
		}
		return fmt.Sprintf("%+v", *x)
	}
	return fmt.Sprintf("%d grows, %d shrinks, %d refusals, soft limit %d MiB, guest available %d MiB; last grow %s; last shrink %s; last refusal %s",
		e.Grows, e.Shrinks, e.Refusals, e.SoftLimitMiB, e.GuestAvailableMiB, ev(e.LastGrow), ev(e.LastShrink), ev(e.LastRefusal))
}

// elasticLogLines is what containerd's log says of a sandbox's elastic
// memory (the shim logs there).
func elasticLogLines(sandboxID string) string {
	b, _ := os.ReadFile(filepath.Join(ctrd.dir, "containerd.log"))
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, sandboxID) && (strings.Contains(line, "elastic") || strings.Contains(line, "memory")) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func elasticOf(t *testing.T, st sandbox.Status) *sandbox.ElasticStatus {
	t.Helper()
	if st.Memory.Elastic == nil {
		t.Fatalf("berth status has no elastic memory: %+v", st.Memory)
	}
	return st.Memory.Elastic
}

func TestElasticPodWithoutLimitsGrowsAndShrinks(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "elastic")
	defer c.removePod(t, pod.id)
	// An idle container, so that the pod has a workload before the hog.
	idle, _ := c.createContainer(t, pod, "idle", "sleep", "1000")
	c.startContainer(t, idle)
	time.Sleep(5 * time.Second) // let the guest settle after boot
	boot := berthStatus(t, pod.id)
	bootRSS := qemuRSSKiB(t)
	e := elasticOf(t, boot)
	if !e.Enabled || e.CeilingMiB != 16384 || boot.Memory.GuestCurrentMiB != 256 {
		t.Fatalf("before the workload: current %d MiB, elastic %+v (last grow %+v); want 256 MiB, enabled with ceiling 16384", boot.Memory.GuestCurrentMiB, e, e.LastGrow)
	}
	t.Logf("boot: guest MemTotal %d MiB, QEMU RSS %d MiB", boot.Memory.GuestMemTotalMiB, bootRSS>>10)

	start := time.Now()
	hog, _ := c.createContainer(t, pod, "hog", "sh", "-c", hogScript)
	c.startContainer(t, hog)
	st := c.waitExited(t, hog, 10*time.Minute)
	freed := time.Now()
	t.Logf("1.5 GiB workload ran %v: exit %d %s", freed.Sub(start).Round(time.Millisecond), st.ExitCode, st.Reason)
	if st.ExitCode != 0 || st.Reason == "OOMKilled" {
		m := berthStatus(t, pod.id).Memory
		t.Fatalf("workload exit %d (%s), want 0: a pod without limits must get the memory it touches; memory: requested %d MiB, current %d MiB, MemTotal %d MiB; elastic: %s\nelastic lines in containerd's log:\n%s",
			st.ExitCode, st.Reason, m.GuestRequestedMiB, m.GuestCurrentMiB, m.GuestMemTotalMiB, elasticSummary(m.Elastic), elasticLogLines(pod.id)+"\nguest console:\n"+tail(filepath.Join(env.runDir, "sandboxes", pod.id, "console.log"), 60))
	}
	after := berthStatus(t, pod.id)
	e = elasticOf(t, after)
	t.Logf("after the workload: %d grows (+%d MiB), last grow %+v", e.Grows, e.GrownBytes>>20, e.LastGrow)
	if e.Grows == 0 || e.GrownBytes < 1400<<20 || e.LastGrow == nil || e.LastGrow.Reason == "" {
		t.Errorf("elastic status after a 1.5 GiB workload: %+v, want grows adding at least 1.4 GiB, with reasons", e)
	}

	// Given back within 30 s of the workload freeing its memory.
	var total, rss int
	for {
		m := berthStatus(t, pod.id).Memory
		total, rss = m.GuestMemTotalMiB, qemuRSSKiB(t)
		if total <= boot.Memory.GuestMemTotalMiB+64 && rss <= bootRSS+64<<10 {
			break
		}
		if time.Since(freed) > 30*time.Second {
			t.Fatalf("30 s after the workload freed its memory: guest MemTotal %d MiB (boot %d), QEMU RSS %d MiB (boot %d); want both within 64 MiB of boot; elastic %+v",
				total, boot.Memory.GuestMemTotalMiB, rss>>10, bootRSS>>10, m.Elastic)
		}
		time.Sleep(500 * time.Millisecond)
	}
	e = elasticOf(t, berthStatus(t, pod.id))
	t.Logf("given back after %v: guest MemTotal %d MiB, QEMU RSS %d MiB; last shrink %+v", time.Since(freed).Round(time.Millisecond), total, rss>>10, e.LastShrink)
	if e.Shrinks == 0 || e.LastShrink == nil || !strings.Contains(e.LastShrink.Reason, "idle") {
		t.Errorf("no shrink recorded: %+v", e)
	}
	// The pod is still usable.
	if kib := c.guestMemTotalKiB(t, idle); kib>>10 > boot.Memory.GuestMemTotalMiB+64 {
		t.Errorf("guest MemTotal seen from the container: %d KiB", kib)
	}
}

func TestElasticPodWithLimitIsOOMKilledInGuest(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "elastic-limit")
	defer c.removePod(t, pod.id)
	id := c.createLimitedContainer(t, pod, "hog", 400<<20, "sh", "-c", "sleep 5; "+hogScript)
	// CRI creates the task on StartContainer; from then on the VM holds
	// the limit, and that is its ceiling: elastic memory has nothing to
	// add.
	c.startContainer(t, id)
	full := berthStatus(t, pod.id)
	m, e := full.Memory, elasticOf(t, full)
	if m.GuestCurrentMiB != 656 || e.CeilingMiB != 656 || e.FloorMiB != 656 {
		t.Errorf("memory %d MiB, elastic %+v: want the VM at boot + limit (656 MiB), which is also its floor and ceiling", m.GuestCurrentMiB, e)
	}
	st := c.waitExited(t, id, 5*time.Minute)
	t.Logf("limited workload: exit %d, reason %s", st.ExitCode, st.Reason)
	if st.ExitCode != 137 || st.Reason != "OOMKilled" {
		t.Errorf("a 1.5 GiB workload with a 400 MiB limit: exit %d reason %q, want 137 OOMKilled", st.ExitCode, st.Reason)
	}
	if e := elasticOf(t, berthStatus(t, pod.id)); e.Grows != 0 {
		t.Errorf("elastic memory grew a pod whose containers all have limits: %+v", e)
	}
}

// TestElasticGrowRefusedWhenHostIsFull: a node whose host_reserve is
// above its MemAvailable refuses every grow; the refusal is logged,
// counted and shown, the guest lifts its soft limit, and the pod runs on
// in the memory it has.
func TestElasticGrowRefusedWhenHostIsFull(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	cfg := writeConfigVariant(t, "[memory]\nhost_reserve = 1073741824\n")
	const id = "elastic-refused"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--runtime-config-path", cfg, busyboxImage, id,
		// dd holds its 100 MiB buffer for all 100 copies (over 10 s
		// here): at its floor the VM is sampled every 5 s while far
		// from pressure (the host's poll), and without a soft limit
		// (the host cannot grow the VM) nothing wakes the sampler
		// sooner, so a shorter dip can go unseen.
		"sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M count=100 && echo done > /tmp/done; sleep 1000")
	defer cleanupTask(t, id)

	deadline := time.Now().Add(3 * time.Minute)
	var e *sandbox.ElasticStatus
	for {
		st := berthStatusWith(t, cfg, id)
		e = elasticOf(t, st)
		if e.Refusals > 0 {
			if st.Memory.GuestCurrentMiB != 256 || e.Grows != 0 {
				t.Errorf("after a refusal: current %d MiB, %d grows; want 256 and none", st.Memory.GuestCurrentMiB, e.Grows)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refusal within 3 minutes: %+v", e)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if e.LastRefusal == nil || !strings.Contains(e.LastRefusal.Reason, "host is too full") || !strings.Contains(e.LastRefusal.Reason, "memory.host_reserve") {
		t.Errorf("last refusal %+v, want the reason naming memory.host_reserve", e.LastRefusal)
	}
	// The workload finishes in the memory the VM has: the soft limit goes
	// once the host says it cannot grow.
	deadline = time.Now().Add(2 * time.Minute)
	for {
		r := ctr(t, "task", "exec", "--exec-id", "check", id, "cat", "/tmp/done")
		if r.code == 0 && strings.TrimSpace(r.stdout) == "done" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the workload did not finish after the refusal: %s %s; elastic %+v", r.stdout, r.stderr, elasticOf(t, berthStatusWith(t, cfg, id)))
		}
		time.Sleep(time.Second)
	}
	if s := taskStatus(t, id); s != "RUNNING" {
		t.Errorf("task is %s after the refusal, want RUNNING", s)
	}
	body := curl(t, "--unix-socket", sandbox.Dir(env.runDir, id)+"/"+sandbox.MetricsSocketName, "http://sandbox/metrics")
	if l := grepLines(body, "berth_memory_elastic_refusals_total{"); !strings.Contains(l, `sandbox_id="`+id+`"`) || strings.HasSuffix(l, " 0") {
		t.Errorf("metrics: %q, want a refusal counted", l)
	}
	logb, _ := os.ReadFile(filepath.Join(ctrd.dir, "containerd.log"))
	if !strings.Contains(string(logb), "elastic memory: grow refused") {
		t.Errorf("containerd's log has no line for the refusal; tail:\n%s", tail(filepath.Join(ctrd.dir, "containerd.log"), 20))
	}
}
