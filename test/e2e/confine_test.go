package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// Two pods' QEMUs each run as an unprivileged uid of their own (not root,
// not each other's: one compromised QEMU must not be able to ptrace
// another), without capabilities, under QEMU's seccomp sandbox.
func TestQEMURunsConfined(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	ids := []string{"confined-a", "confined-b"}
	for _, id := range ids {
		mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
		defer cleanupTask(t, id)
	}
	pids := qemuPids()
	if len(pids) != 2 {
		t.Fatalf("QEMU pids %v for two tasks, want two", pids)
	}
	uids := map[string]bool{}
	uidRE := regexp.MustCompile(`(?m)^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$`)
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		st := string(b)
		m := uidRE.FindStringSubmatch(st)
		if m == nil || m[1] == "0" || m[1] != m[2] || m[1] != m[3] || m[1] != m[4] {
			t.Errorf("QEMU %d runs as uids %v, want one unprivileged uid", pid, m)
		} else {
			uids[m[1]] = true
		}
		for _, want := range []string{"Seccomp:\t2", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"} {
			if !strings.Contains(st, want) {
				t.Errorf("QEMU %d: /proc status lacks %q", pid, want)
			}
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmdline), "-sandbox\x00on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny") {
			t.Errorf("QEMU %d runs without -sandbox: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	if len(uids) != 2 {
		t.Errorf("the two QEMUs share uid %v, want one each", uids)
	}
	// The pods still work: exec answers.
	for _, id := range ids {
		if r := ctr(t, "task", "exec", "--exec-id", "e", id, "true"); r.code != 0 {
			t.Errorf("exec in %s: exit %d: %s", id, r.code, r.stderr)
		}
	}
}
