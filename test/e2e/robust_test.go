package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerdLog returns what containerd (and the shims it started, whose
// logs it relays) has logged so far.
func containerdLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ctrd.dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCtrVirtiofsdKilledStopsTask: virtiofsd serves the container's root
// file system; when it dies the sandbox fails as a whole: the task is
// reported stopped, with the reason in the shim's log, and delete works
// without the guest.
func TestCtrVirtiofsdKilledStopsTask(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-virtiofsd-killed"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	pids := virtiofsdPids()
	if len(pids) == 0 {
		t.Fatal("no virtiofsd for the sandbox")
	}
	killed := time.Now()
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	waitStatus(t, id, "STOPPED", 10*time.Second)
	t.Logf("containerd saw the task stop %v after virtiofsd was killed", time.Since(killed))
	r := ctr(t, "task", "ls")
	if !strings.Contains(r.stdout, id) {
		t.Fatalf("task gone before delete:\n%s", r.stdout)
	}
	start := time.Now()
	mustCtr(t, "task", "delete", id)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("ctr task delete took %v", d)
	}
	mustCtr(t, "container", "rm", id)
	if l := containerdLog(t); !strings.Contains(l, "virtiofsd (pid") || !strings.Contains(l, "while the VM was running") {
		t.Errorf("the shim's log does not say virtiofsd died")
	}
}
