package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// A watch waits for its file to exist, reports a write at once, and
// follows the file when it is removed and created again (a cgroup that
// goes and comes back).
func TestFileWatchReportsWrites(t *testing.T) {
	p := filepath.Join(t.TempDir(), "memory.events")
	w := newFileWatch(p)
	t.Cleanup(w.close)
	if w.ok() {
		t.Fatal("watching a file that does not exist")
	}
	for round := 0; round < 2; round++ {
		if err := os.WriteFile(p, []byte("high 0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if !w.ok() {
			t.Fatalf("round %d: not watching an existing file", round)
		}
		drain(w.changed)
		if err := os.WriteFile(p, []byte("high 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.changed:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: no wake-up for a write", round)
		}
		os.Remove(p)
		deadline := time.Now().Add(5 * time.Second)
		for w.ok() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if w.ok() {
			t.Fatalf("round %d: still watching a removed file", round)
		}
	}
}

func drain(c chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// The sampler may slow down only far from every reason for pressure.
func TestFarFromPressure(t *testing.T) {
	const mib = 1 << 20
	base := pressureSample{memAvailable: 165 * mib, highEvents: 4}
	for _, tc := range []struct {
		name string
		s    pressureSample
		want bool
	}{
		{"idle guest above the threshold", base, true},
		{"within the margin of the threshold", pressureSample{memAvailable: 140 * mib, highEvents: 4}, false},
		{"memory stall", pressureSample{memAvailable: 165 * mib, psiSomeAvg10: 0.5, highEvents: 4}, false},
		{"throttled since the last sample", pressureSample{memAvailable: 165 * mib, highEvents: 5}, false},
	} {
		if got := farFromPressure(tc.s, base, 136*mib); got != tc.want {
			t.Errorf("%s: far = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Far from pressure the sampler takes one sample a second, wakes at once
// when memory.events changes, and never samples more than every 100 ms
// however often it changes.
func TestSamplerSpeeds(t *testing.T) {
	root := fakePressureRoot(t, 500)
	events := filepath.Join(root, containersCgroup, "memory.events")
	w := newPressureWatch(root)
	t.Cleanup(w.stop)
	w.start()
	seq := func() uint64 { w.mu.Lock(); defer w.mu.Unlock(); return w.last.seq }
	time.Sleep(300 * time.Millisecond) // the first samples, fast until far
	s0 := seq()
	time.Sleep(2500 * time.Millisecond)
	if n := seq() - s0; n < 1 || n > 4 {
		t.Errorf("%d samples in 2.5 s far from pressure, want 2-3", n)
	}
	s1 := seq()
	start := time.Now()
	if err := os.WriteFile(events, []byte("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for seq() == s1 && time.Since(start) < 2*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Errorf("sampled %v after memory.events changed, want at once", d)
	}
	s2 := seq()
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		os.WriteFile(events, []byte("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"), 0o644)
		time.Sleep(2 * time.Millisecond)
	}
	if n := seq() - s2; n > 12 {
		t.Errorf("%d samples in 1 s of memory.events changes, want at most ~10", n)
	}
}

// WaitOOM answers as soon as memory.events counts a new kill: it sleeps on
// the file's watch, not on a poll (both of its timed reads are made an
// hour long here).
func TestWaitOOMWakesOnMemoryEvents(t *testing.T) {
	poll, backstop := oomPollInterval, oomBackstop
	oomPollInterval, oomBackstop = time.Hour, time.Hour
	t.Cleanup(func() { oomPollInterval, oomBackstop = poll, backstop })
	dir := t.TempDir()
	events := filepath.Join(dir, "memory.events")
	if err := os.WriteFile(events, []byte("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(Options{SysRoot: t.TempDir()})
	s.containers["c"] = &container{id: "c", cgroupPaths: map[string]string{"": dir}}
	type answer struct {
		n   uint64
		err error
		at  time.Time
	}
	done := make(chan answer, 1)
	go func() {
		r, err := s.WaitOOM(context.Background(), &api.WaitOOMRequest{ContainerId: "c", After: 0})
		a := answer{err: err, at: time.Now()}
		if r != nil {
			a.n = r.OomKillCount
		}
		done <- a
	}()
	// Long enough for WaitOOM to have read the file and gone to sleep.
	time.Sleep(300 * time.Millisecond)
	select {
	case a := <-done:
		t.Fatalf("WaitOOM returned %+v before any kill", a)
	default:
	}
	wrote := time.Now()
	if err := os.WriteFile(events, []byte("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-done:
		if a.err != nil || a.n != 1 {
			t.Fatalf("WaitOOM = %d, %v; want 1", a.n, a.err)
		}
		if d := a.at.Sub(wrote); d > time.Second {
			t.Errorf("WaitOOM answered %v after the kill was counted, want at once", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitOOM did not answer within 5 s of memory.events counting a kill")
	}
}
