package agent

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

func TestParsePSI(t *testing.T) {
	some, st, ft := parsePSI(strings.NewReader("some avg10=12.50 avg60=3.00 avg300=0.10 total=123456\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=789\n"))
	if some != 12.5 || st != 123456 || ft != 789 {
		t.Errorf("parsePSI = %v %d %d", some, st, ft)
	}
}

func TestContainersHighFor(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct{ containers, avail, reserve, want uint64 }{
		{10 * mib, 150 * mib, 128 * mib, 32 * mib},  // 22 MiB of headroom above what they use
		{100 * mib, 100 * mib, 128 * mib, 72 * mib}, // below the reserve: the limit is under usage
		{1 * mib, 10 * mib, 128 * mib, minContainersHigh},
		{0, 0, 0, minContainersHigh},
	} {
		if got := containersHighFor(tc.containers, tc.avail, tc.reserve); got != tc.want {
			t.Errorf("containersHighFor(%d, %d, %d) = %d MiB, want %d MiB", tc.containers>>20, tc.avail>>20, tc.reserve>>20, got>>20, tc.want>>20)
		}
	}
}

// fakePressureRoot is a sysfs root with meminfo, PSI and the containers'
// cgroup.
func fakePressureRoot(t *testing.T, availMiB int) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"proc/pressure", containersCgroup} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	setAvail(t, root, availMiB)
	write(t, filepath.Join(root, "proc/pressure/memory"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")
	write(t, filepath.Join(root, containersCgroup, "memory.current"), fmt.Sprint(10<<20))
	write(t, filepath.Join(root, containersCgroup, "memory.events"), "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
	write(t, filepath.Join(root, containersCgroup, "memory.high"), "max")
	return root
}

func setAvail(t *testing.T, root string, availMiB int) {
	write(t, filepath.Join(root, "proc/meminfo"), fmt.Sprintf("MemTotal: 214332 kB\nMemFree: 100000 kB\nMemAvailable: %d kB\n", availMiB*1024))
}

// write replaces a file atomically, as /proc reads are: the sampler must
// never see it half written.
func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p+".tmp", []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
}

func TestWaitMemoryPressureTimesOutWithSample(t *testing.T) {
	root := fakePressureRoot(t, 150)
	w := newPressureWatch(root)
	t.Cleanup(w.stop)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	r := w.wait(ctx, &api.WaitMemoryPressureRequest{GrowBelowBytes: 100 << 20, TimeoutMs: 400, Throttle: true, ReserveBytes: 128 << 20})
	if d := time.Since(start); d < 350*time.Millisecond || d > 3*time.Second {
		t.Errorf("returned after %v, want about the 400 ms timeout", d)
	}
	if r.Pressure || r.Seq == 0 || r.MemAvailableBytes != 150<<20 || r.MinAvailableBytes != 150<<20 || r.PsiSomeTotalUs != 10 {
		t.Errorf("sample = %+v", r)
	}
	// The soft limit leaves the reserve free: 10 MiB used + (150-128).
	b, _ := os.ReadFile(filepath.Join(root, containersCgroup, "memory.high"))
	if got := strings.TrimSpace(string(b)); got != fmt.Sprint(32<<20) {
		t.Errorf("memory.high = %s, want %d", got, 32<<20)
	}
	if r.ContainersHighBytes != 32<<20 {
		t.Errorf("reported high %d", r.ContainersHighBytes)
	}
}

func TestWaitMemoryPressureReturnsEarly(t *testing.T) {
	root := fakePressureRoot(t, 150)
	w := newPressureWatch(root)
	t.Cleanup(w.stop)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := w.wait(ctx, &api.WaitMemoryPressureRequest{TimeoutMs: 200})
	go func() {
		time.Sleep(300 * time.Millisecond)
		setAvail(t, root, 80)
	}()
	start := time.Now()
	r := w.wait(ctx, &api.WaitMemoryPressureRequest{AfterSeq: first.Seq, GrowBelowBytes: 100 << 20, TimeoutMs: 20000})
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("pressure reported after %v", d)
	}
	if !r.Pressure || r.MemAvailableBytes != 80<<20 || r.MinAvailableBytes != 80<<20 || r.Seq <= first.Seq {
		t.Errorf("sample = %+v", r)
	}
	// Throttled containers are pressure too.
	setAvail(t, root, 150)
	write(t, filepath.Join(root, containersCgroup, "memory.events"), "low 0\nhigh 3\nmax 0\n")
	r = w.wait(ctx, &api.WaitMemoryPressureRequest{AfterSeq: r.Seq, GrowBelowBytes: 100 << 20, TimeoutMs: 20000})
	if !r.Pressure || r.HighEvents != 3 || !strings.Contains(r.Reason, "throttled") {
		t.Errorf("after high events: %+v", r)
	}
	// Without throttle the soft limit is lifted.
	if b, _ := os.ReadFile(filepath.Join(root, containersCgroup, "memory.high")); strings.TrimSpace(string(b)) != "max" {
		t.Errorf("memory.high = %s without throttle", b)
	}
}

func TestThrottleLapsesWithoutHost(t *testing.T) {
	root := fakePressureRoot(t, 150)
	w := newPressureWatch(root)
	t.Cleanup(w.stop)
	w.mu.Lock()
	w.throttle, w.reserve, w.leaseEnd = true, 128<<20, time.Now().Add(time.Hour)
	w.mu.Unlock()
	w.sampleOnce(time.Now())
	if w.highSet == 0 {
		t.Fatal("no soft limit under a valid lease")
	}
	w.sampleOnce(time.Now().Add(2 * time.Hour))
	if b, _ := os.ReadFile(filepath.Join(root, containersCgroup, "memory.high")); strings.TrimSpace(string(b)) != "max" || w.highSet != 0 {
		t.Errorf("memory.high = %s after the lease ended", b)
	}
}

// seqOf is the number of the watch's last sample.
func seqOf(w *pressureWatch) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last.seq
}

func TestSlowSamplerWakesForThrottlingAtMostEvery100ms(t *testing.T) {
	root := fakePressureRoot(t, 150)
	w := newPressureWatch(root)
	t.Cleanup(w.stop)
	w.mu.Lock()
	w.growBelow = 100 << 20 // 150 MiB available is far from it: slow
	w.mu.Unlock()
	w.start()
	time.Sleep(300 * time.Millisecond)
	slow := seqOf(w)
	if slow == 0 {
		t.Fatal("no first sample")
	}
	// memory.events modified in place, as the kernel does when it
	// throttles: a sample at once, not at the next second.
	events := filepath.Join(root, containersCgroup, "memory.events")
	start := time.Now()
	if err := os.WriteFile(events, []byte("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for seqOf(w) == slow {
		if time.Since(start) > 400*time.Millisecond {
			t.Fatalf("no sample %v after memory.events changed (slow samples are 1 s apart)", time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Modified every 10 ms for a second: at most one sample per 100 ms.
	before, flood := seqOf(w), time.Now()
	for i := 0; i < 100; i++ {
		os.WriteFile(events, []byte("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"), 0o644)
		time.Sleep(10 * time.Millisecond)
	}
	n, most := seqOf(w)-before, uint64(time.Since(flood)/pressureSampleEvery)+2
	if n > most || n < 3 {
		t.Errorf("%d samples while memory.events changed every 10 ms for %v, want 3 to %d (one per 100 ms)", n, time.Since(flood).Round(time.Millisecond), most)
	}
}

// A VM at its floor, which the host polls every 5 s, is sampled that
// slowly far from pressure; once the host polls every second (the VM
// grew and may shrink, and the host sizes the shrink by these samples)
// the sampler samples at once and then every second.
func TestSlowCycleFollowsTheHostsPoll(t *testing.T) {
	root := fakePressureRoot(t, 150)
	w := newPressureWatch(root)
	t.Cleanup(w.stop)
	poll := func(timeoutMs uint32) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		w.wait(ctx, &api.WaitMemoryPressureRequest{AfterSeq: math.MaxUint64, GrowBelowBytes: 100 << 20, TimeoutMs: timeoutMs})
	}
	poll(5000)
	time.Sleep(300 * time.Millisecond)
	atFloor := seqOf(w)
	if atFloor == 0 {
		t.Fatal("no first sample")
	}
	time.Sleep(2 * time.Second)
	if n := seqOf(w) - atFloor; n != 0 {
		t.Errorf("%d samples in 2 s far from pressure while the host polls every 5 s, want none", n)
	}
	start := time.Now()
	poll(1000)
	for seqOf(w) == atFloor {
		if time.Since(start) > 2*time.Second {
			t.Fatalf("no sample %v after the host began polling every second", time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	retimed := seqOf(w)
	time.Sleep(3500 * time.Millisecond)
	if n := seqOf(w) - retimed; n < 2 || n > 4 {
		t.Errorf("%d samples in 3.5 s while the host polls every second, want 2 to 4", n)
	}
}
