package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vmmProcesses lists the QEMU and virtiofsd processes serving sandboxes of
// this test run (their command lines name the run dir).
func vmmProcesses() []string {
	var out []string
	for _, l := range leaks() {
		if strings.HasPrefix(l, "process ") {
			out = append(out, l)
		}
	}
	return out
}

// TestStaleSandboxCleanedByNextRun kills `berth run` itself with SIGKILL,
// so none of its teardown runs. QEMU and virtiofsd must die with it
// (Pdeathsig); the sandbox directory and its mounts are left for the next
// `berth run`, whose CleanupStale must remove them without touching the
// user's root file system, which is bind-mounted inside.
func TestStaleSandboxCleanedByNextRun(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	before := treeSize(t, env.rootfs)
	cmd, br, stderr := startRun(t, "echo ready; sleep 1000")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The code is -1 (killed), nothing to check; waiting also reaps
	// berth, so CleanupStale below sees its pid as gone, not as a zombie.
	waitCmd(t, cmd, br, 15*time.Second)

	eventually(t, 5*time.Second, "QEMU and virtiofsd exit after the killed berth run", func() error {
		if p := vmmProcesses(); len(p) > 0 {
			return fmt.Errorf("QEMU or virtiofsd outlived the killed berth run:\n  %s\nberth stderr:\n%s",
				strings.Join(p, "\n  "), stderr)
		}
		return nil
	})

	// What is left must be exactly what CleanupStale is for: a sandbox
	// directory and mounts, among them the user's root file system. If
	// this were empty, the rest of the test would prove nothing.
	left := leaks()
	var dirs, rootfsMounts int
	for _, l := range left {
		switch {
		case strings.HasPrefix(l, "sandbox dir "):
			dirs++
		case strings.HasPrefix(l, "mount ") && strings.HasSuffix(l, "/rootfs"):
			rootfsMounts++
		}
	}
	if dirs != 1 || rootfsMounts == 0 {
		t.Fatalf("after SIGKILL, want one stale sandbox dir with the rootfs mounted in it; found:\n  %s", strings.Join(left, "\n  "))
	}

	r := berth(t, "", "run", "--rootfs", env.rootfs, "--", "true")
	if r.code != 0 {
		t.Fatalf("berth run after the killed one: exit %d; stderr:\n%s", r.code, r.stderr)
	}
	// A recursive delete that went through the bind mount would have
	// emptied the rootfs, at least in part; the run above only needed
	// /bin/true, so compare the whole tree on the host.
	if _, err := os.Stat(filepath.Join(env.rootfs, "bin", "busybox")); err != nil {
		t.Errorf("the user's rootfs lost bin/busybox after stale cleanup: %v", err)
	}
	if after := treeSize(t, env.rootfs); after != before {
		t.Errorf("the user's rootfs changed across stale cleanup: %d entries before, %d after", before, after)
	}
}

// treeSize counts the entries under dir.
func treeSize(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(string, fs.DirEntry, error) error { n++; return nil })
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return n
}
