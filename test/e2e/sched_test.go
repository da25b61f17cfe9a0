package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// schedBatch is Linux's SCHED_BATCH, field 41 of /proc/<pid>/task/<tid>/stat.
const schedBatch = 3

// threadPolicies returns the scheduling policy of every thread of pid.
func threadPolicies(t *testing.T, pid int) map[int]int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		// Fields after the command (which may hold spaces) start at the
		// last ')'; the policy is field 41, the 39th after it.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		tid, _ := strconv.Atoi(e.Name())
		out[tid], _ = strconv.Atoi(f[38])
	}
	return out
}

// Under TCG, QEMU and every thread it starts (vCPU, main loop, RCU) run as
// SCHED_BATCH, so that a burst of VMs sharing few CPUs does not spend its
// time preempting one another (hypervisor.scheduling = "auto"), while the
// process that started it keeps the default policy on every thread;
// "normal" leaves QEMU alone.
func TestQEMURunsAsBatchWorkUnderTCG(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		name, extra string
		batch       bool // expected under TCG
	}{
		{"auto", "", true},
		{"normal", "[hypervisor]\nscheduling = \"normal\"\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer assertNoLeaks(t)
			cfg := writeConfigVariant(t, tc.extra)
			// The container exits by itself once the policies are read.
			cmd, br, stderr := startRunWith(t, []string{"--config", cfg}, "echo ready; sleep 2; echo done")
			defer func() {
				if code, rest := waitCmd(t, cmd, br, 30*time.Second); code != 0 || rest != "done\n" {
					t.Errorf("berth run exited %d with %q, want 0 and done", code, rest)
				}
			}()
			pids := qemuPids()
			if len(pids) != 1 {
				t.Fatalf("QEMU pids %v, want one; stderr:\n%s", pids, stderr.String())
			}
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
			want := tc.batch && strings.Contains(string(cmdline), "-accel\x00tcg")
			threads := threadPolicies(t, pids[0])
			if len(threads) < 2 {
				t.Fatalf("QEMU has threads %v, want its main loop and a vCPU at least", threads)
			}
			for tid, pol := range threads {
				if (pol == schedBatch) != want {
					t.Errorf("QEMU thread %d has policy %d, want batch=%v (all: %v)", tid, pol, want, threads)
				}
			}
			for tid, pol := range threadPolicies(t, cmd.Process.Pid) {
				if pol != 0 {
					t.Errorf("berth run's thread %d has policy %d, want SCHED_OTHER: only QEMU is batch work", tid, pol)
				}
			}
		})
	}
}
