package qemu

import (
	"bytes"
	"os/exec"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// startBatch's child runs as SCHED_BATCH from its first instruction, and
// the thread that started it is back to its own policy afterwards.
func TestStartBatchSchedulesOnlyTheChild(t *testing.T) {
	runtime.LockOSThread() // so that "this thread" below is startBatch's
	defer runtime.UnlockOSThread()
	before, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The child reports its own policy: it cannot have been set after
	// the fork, since nothing else knows the child.
	cmd := exec.Command("/bin/sh", "-c", `set -- $(cat /proc/self/stat); shift 40; echo $1`)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := startBatch(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "3\n" {
		t.Errorf("child's policy %q, want 3 (SCHED_BATCH)", got)
	}
	after, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if after.Policy != before.Policy || after.Nice != before.Nice {
		t.Errorf("the starting thread went from policy %d nice %d to %d nice %d", before.Policy, before.Nice, after.Policy, after.Nice)
	}
}
