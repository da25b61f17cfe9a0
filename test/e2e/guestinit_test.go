package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// TestGuestPID1ReapsOrphans: the guest's PID 1 (the C reaper of
// internal/agent/pid1) is not the agent service but its parent, and a
// process orphaned in the guest's root PID namespace is re-parented to it
// and reaped when it exits, leaving no zombie behind.
func TestGuestPID1ReapsOrphans(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	cfg := hostileConfig(t)
	const id = "pid1-reaps"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--runtime-config-path", cfg, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)

	// The debug exec shell is a child of the service ($PPID). Its inner
	// shell starts a sleep and exits at once, orphaning it.
	r := guestRoot(t, cfg, id, id, `
		ppid() { $B awk '/^PPid:/ { print $2 }' /proc/$1/status; }
		echo "service $PPID parent $(ppid $PPID)"
		pid=$($B sh -c "$B sleep 2 </dev/null >/dev/null 2>&1 & echo \$!")
		$B sleep 0.5
		echo "orphan parent $(ppid $pid)"
		$B sleep 3
		if [ -e /proc/$pid ]; then echo "orphan left: $($B awk '/^State:/ { print $2 }' /proc/$pid/status)"; else echo "orphan reaped"; fi`)
	if r.code != 0 {
		t.Fatalf("guest script: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	var service, parent int
	if _, err := fmt.Sscanf(r.stdout, "service %d parent %d", &service, &parent); err != nil || service == 1 || parent != 1 {
		t.Errorf("want the agent service to be a child of PID 1, not PID 1 itself; got %q", r.stdout)
	}
	if !strings.Contains(r.stdout, "orphan parent 1\n") {
		t.Errorf("the orphan was not re-parented to PID 1: %q", r.stdout)
	}
	if !strings.Contains(r.stdout, "orphan reaped") {
		t.Errorf("PID 1 did not reap the orphan after it exited: %q", r.stdout)
	}
}
