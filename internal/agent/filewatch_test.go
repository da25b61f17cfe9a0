package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"
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
