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

// TestCtrExecIntoPausedTaskRefused: runc's shim refuses an exec into a
// paused task at once (containerd 1.6 and 2.x used to hang on Berth, and
// resume, kill and delete with it); the task still resumes.
func TestCtrExecIntoPausedTaskRefused(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-exec-paused"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	mustCtr(t, "task", "pause", id)
	r := ctr(t, "task", "exec", "--exec-id", "in-paused", id, "echo", "no")
	if r.code == 0 || !strings.Contains(r.stderr, "cannot exec in a paused state") || !strings.Contains(r.stderr, "failed precondition") {
		t.Fatalf("exec into a paused task: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r.elapsed > 2*time.Second {
		t.Errorf("refusing the exec took %v", r.elapsed)
	}
	mustCtr(t, "task", "resume", id)
	if st := taskStatus(t, id); st != "RUNNING" {
		t.Fatalf("status %q after resume", st)
	}
	r = ctr(t, "task", "exec", "--exec-id", "after-resume", id, "echo", "yes")
	if r.code != 0 || r.stdout != "yes\n" {
		t.Fatalf("exec after resume: exit %d, %q, %s", r.code, r.stdout, r.stderr)
	}
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, id, "STOPPED", 10*time.Second)
	// Kill of an exited task succeeds, as CRI expects.
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// TestCtrExecIntoStoppedTaskRefused: the exec never reaches the guest
// (it used to fail there with "lstat /proc/N/ns/ipc" and a TaskExit 255).
func TestCtrExecIntoStoppedTaskRefused(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-exec-stopped"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "true")
	defer cleanupTask(t, id)
	waitStatus(t, id, "STOPPED", 30*time.Second)
	r := ctr(t, "task", "exec", "--exec-id", "in-stopped", id, "echo", "no")
	if r.code == 0 || !strings.Contains(r.stderr, "cannot exec in a stopped state") || !strings.Contains(r.stderr, "failed precondition") {
		t.Fatalf("exec into a stopped task: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}
