package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A shell in the guest cannot play a compromised agent: the agent is PID 1
// and holds the virtio-serial port. These tests boot a guest whose /init is
// test/e2e/evilagent, the real agent plus attacks on the host through the
// agent's own channel, and check what the host holds meanwhile.

// The evil guest's configuration caps each log at this size, so that a
// flood of a few hundred KiB shows the cap (hypervisor.log_max_kib).
const evilLogMaxKiB = 64

var evil struct {
	once   sync.Once
	config string // the test configuration, with the evil image
	err    error
}

// evilConfig builds the evil guest image once per test binary and returns
// a configuration that boots it: the test configuration with state_dir
// pointing at the image's private directory (whose cache is the real
// state directory's, so the kernel is not fetched again), [debug]
// guest_exec on (the test triggers and reads the attack as root in the
// guest) and small log caps. The shared guest image is not touched.
func evilConfig(t *testing.T) string {
	t.Helper()
	evil.once.Do(func() { evil.config, evil.err = buildEvilGuest() })
	if evil.err != nil {
		t.Fatalf("evil guest image: %v", evil.err)
	}
	return evil.config
}

func buildEvilGuest() (string, error) {
	root := repoRoot()
	// The Makefile knows how to build a static agent (cgo, tags, flags).
	if out, err := exec.Command("make", "-s", "-C", root, "bin/berth-evil-agent").CombinedOutput(); err != nil {
		return "", fmt.Errorf("make bin/berth-evil-agent: %v\n%s", err, out)
	}
	stateDir := filepath.Join(filepath.Dir(env.runDir), "evil-state")
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return "", err
	}
	if err := os.Symlink(filepath.Join(env.stateDir, "cache"), filepath.Join(stateDir, "cache")); err != nil && !os.IsExist(err) {
		return "", err
	}
	base, err := os.ReadFile(env.config)
	if err != nil {
		return "", err
	}
	line := fmt.Sprintf("state_dir = %q\n", env.stateDir)
	if !strings.Contains(string(base), line) {
		return "", fmt.Errorf("no %q in %s", line, env.config)
	}
	cfg := strings.Replace(string(base), line, fmt.Sprintf("state_dir = %q\n", stateDir), 1) +
		fmt.Sprintf("[hypervisor]\nlog_max_kib = %d\n[debug]\nguest_exec = true\n", evilLogMaxKiB)
	path := filepath.Join(filepath.Dir(env.runDir), "evil.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", err
	}
	out, err := exec.Command(env.berth, "--config", path, "guest", "build", "--agent", filepath.Join(root, "bin", "berth-evil-agent")).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("berth guest build: %v\n%s", err, out)
	}
	return path, nil
}

// evilStats reads the evil agent's counters (test/e2e/evilagent StatsFile)
// as root in the guest.
func evilStats(t *testing.T, cfg, id string) map[string]int {
	t.Helper()
	r := guestRoot(t, cfg, id, id, "$B cat /run/evil-stats")
	if r.code != 0 {
		t.Fatalf("read the evil agent's counters: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	stats := map[string]int{}
	for _, f := range strings.Fields(r.stdout) {
		k, v, _ := strings.Cut(f, "=")
		stats[k], _ = strconv.Atoi(v)
	}
	return stats
}

// shimOf is the pid of the shim serving container id of our containerd.
func shimOf(t *testing.T, id string) int {
	t.Helper()
	pids := pidsMatching(func(c string) bool {
		args := strings.Split(c, "\x00")
		return strings.Contains(args[0], "containerd-shim-berth-v2") && strings.Contains(c, ctrd.sock) &&
			strings.Contains("\x00"+c, "\x00-id\x00"+id+"\x00")
	})
	if len(pids) != 1 {
		t.Fatalf("shims of %s: %v, want one", id, pids)
	}
	return pids[0]
}

// fileSize is the size of path, 0 if it does not exist.
func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// TestHostileGuestFloodsStreamsOOMAndConsole: a compromised agent, once
// the container runs, opens yamux streams toward the host from 400
// goroutines (writing to each until the host resets it, never closing
// one), sends 2000 yamux pings, answers every WaitOOM at once with a
// forged, ever greater OOM kill count, and writes 1 MiB to the serial
// console. The host must hold little for it, and keep serving the pod:
//
//   - the shim's resident memory grows by less than 16 MiB: that is what
//     yamux's accept backlog alone (64 streams) would hold with full 256
//     KiB windows, and a quarter of what the guest pinned before the host
//     reset guest streams (about 128 MiB for 256 streams, issue 10);
//   - containerd gets at most one TaskOOM per second of the flood (the
//     shim's OOM pacing), and the shim asks WaitOOM at most a few times a
//     second (it does not spin);
//   - console.log and virtiofsd.log, with their one rotation, stay within
//     hypervisor.log_max_kib each, and the console did rotate;
//   - ctr task ls and exec answer during the flood, and the pod deletes
//     cleanly, leaving nothing.
func TestHostileGuestFloodsStreamsOOMAndConsole(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	cfg := evilConfig(t)
	out := ctrEvents(t)

	const id = "hostile-flood"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--runtime-config-path", cfg, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	shim := shimOf(t, id)
	// Let the shim settle: a few calls of each kind it makes.
	for i := 0; i < 3; i++ {
		mustCtr(t, "task", "exec", "--exec-id", fmt.Sprintf("warm%d", i), id, "true")
	}
	if s := evilStats(t, cfg, id); s["streams_opened"] != 0 || s["oom_answers"] != 0 {
		t.Fatalf("the evil agent attacked before it was told to: %v", s)
	}
	rssBefore, threadsBefore := procStatusField(t, shim, "VmRSS"), procStatusField(t, shim, "Threads")

	const flood = 20 * time.Second
	r := guestRoot(t, cfg, id, id, "echo 'streams=400 pings=2000 oom=1 console=1048576' > /run/evil-attack.tmp && $B mv /run/evil-attack.tmp /run/evil-attack")
	if r.code != 0 {
		t.Fatalf("trigger the attack: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	start := time.Now()
	rssMax, threadsMax, execs := rssBefore, threadsBefore, 0
	var slowest time.Duration
	for time.Since(start) < flood {
		time.Sleep(time.Second)
		rssMax = max(rssMax, procStatusField(t, shim, "VmRSS"))
		threadsMax = max(threadsMax, procStatusField(t, shim, "Threads"))
		if time.Since(start) > time.Duration(execs)*5*time.Second {
			if st := taskStatus(t, id); st != "RUNNING" {
				t.Fatalf("task is %q during the flood, want RUNNING", st)
			}
			r := ctr(t, "task", "exec", "--exec-id", fmt.Sprintf("flood%d", execs), id, "echo", "alive")
			if r.code != 0 || strings.TrimSpace(r.stdout) != "alive" {
				t.Fatalf("exec during the flood: exit %d, %q %s", r.code, r.stdout, r.stderr)
			}
			slowest = max(slowest, r.elapsed)
			execs++
		}
	}
	stats := evilStats(t, cfg, id)
	elapsed := time.Since(start)
	oomEvents := 0
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "/tasks/oom") && strings.Contains(line, id) {
			oomEvents++
		}
	}
	sbDir := filepath.Join(env.runDir, "sandboxes", id)
	logs := map[string]int64{}
	for _, name := range []string{"console.log", "console.log.1", "virtiofsd.log", "virtiofsd.log.1"} {
		logs[name] = fileSize(filepath.Join(sbDir, name))
	}
	rssAfter := procStatusField(t, shim, "VmRSS")
	t.Logf("evil agent after %v: %v", elapsed.Round(time.Second), stats)
	t.Logf("shim VmRSS %d KiB before, %d KiB at most, %d KiB after; threads %d before, %d at most", rssBefore, rssMax, rssAfter, threadsBefore, threadsMax)
	t.Logf("TaskOOM events %d, WaitOOM answers %d; %d execs during the flood, slowest %v; logs %v", oomEvents, stats["oom_answers"], execs, slowest.Round(time.Millisecond), logs)

	// The attack happened, at full strength.
	if stats["streams_opened"] < 1000 || stats["bytes_written"] < 16<<20 || stats["pings_sent"] < 2000 {
		t.Errorf("the stream attack did not run: %v", stats)
	}
	if stats["console_bytes"] < 4*evilLogMaxKiB<<10 {
		t.Errorf("the console flood wrote %d bytes, want at least %d", stats["console_bytes"], 4*evilLogMaxKiB<<10)
	}
	// What the host held for it.
	if grew := rssMax - rssBefore; grew > 16<<10 {
		t.Errorf("the shim's VmRSS grew by %d KiB (%d -> %d) during the stream flood, want < 16 MiB", grew, rssBefore, rssMax)
	}
	if threadsMax > threadsBefore+8 {
		t.Errorf("the shim's threads grew from %d to %d", threadsBefore, threadsMax)
	}
	if limit := int(elapsed/time.Second) + 2; oomEvents < 1 || oomEvents > limit {
		t.Errorf("%d TaskOOM events in %v of forged OOM answers, want between 1 and %d (one per second)", oomEvents, elapsed.Round(time.Second), limit)
	}
	if limit := 3*int(elapsed/time.Second) + 10; stats["oom_answers"] > limit {
		t.Errorf("the shim asked WaitOOM %d times in %v, want at most %d: it spins on a guest that answers at once", stats["oom_answers"], elapsed.Round(time.Second), limit)
	}
	for name, size := range logs {
		if size > evilLogMaxKiB<<10 {
			t.Errorf("%s is %d bytes, over hypervisor.log_max_kib = %d", name, size, evilLogMaxKiB)
		}
	}
	if logs["console.log.1"] == 0 {
		t.Errorf("console.log did not rotate under a %d-byte flood", stats["console_bytes"])
	}

	// Deleted while the attack goes on: the shim exits and leaves nothing
	// (assertNoLeaks).
	cleanupTask(t, id)
}
