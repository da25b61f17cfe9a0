package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// TestCtrGuestKernelTablesFitTheVMsMemory: the guest's system-wide limits
// on threads, open files and pids are those of a machine with the VM's
// largest memory, as its command line sets them, not the ones its kernel
// computed at boot for 256 MiB (1875 threads, 23933 files) or a small
// kernel's 4096 pids: a pod with a memory limit of gigabytes runs a JVM's
// thousands of threads, as under runc.
func TestCtrGuestKernelTablesFitTheVMsMemory(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	r := ctr(t, "run", "--rm", "--runtime", berthRuntime, busyboxImage, "kernel-tables", "sh", "-c",
		"cat /proc/sys/kernel/threads-max /proc/sys/fs/file-max /proc/sys/kernel/pid_max; cat /proc/cmdline")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 4 {
		t.Fatalf("exit %d, output %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	cmdline := strings.Fields(lines[3])
	for i, c := range []struct {
		sysctl  string
		atLeast uint64
	}{
		{"kernel.threads-max", 16384}, // a 2 GiB machine's
		{"fs.file-max", 200000},
		{"kernel.pid_max", 4 << 20},
	} {
		got, err := strconv.ParseUint(strings.TrimSpace(lines[i]), 10, 64)
		if err != nil || got < c.atLeast {
			t.Errorf("%s is %q in the guest, want at least %d", c.sysctl, lines[i], c.atLeast)
		}
		want := "sysctl." + c.sysctl + "=" + strings.TrimSpace(lines[i])
		found := false
		for _, p := range cmdline {
			found = found || p == want
		}
		if !found {
			t.Errorf("%s = %s in the guest is not what its command line sets (%s)", c.sysctl, lines[i], lines[3])
		}
	}
}
