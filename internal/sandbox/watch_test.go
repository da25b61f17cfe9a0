package sandbox

import (
	"context"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeVMM stands in for QEMU: Kill ends it.
type fakeVMM struct {
	done   chan struct{}
	once   sync.Once
	killed bool
}

func newFakeVMM() *fakeVMM { return &fakeVMM{done: make(chan struct{})} }

func (f *fakeVMM) Pid() int                           { return 1 }
func (f *fakeVMM) Done() <-chan struct{}              { return f.done }
func (f *fakeVMM) ExitError() error                   { return nil }
func (f *fakeVMM) Shutdown(ctx context.Context) error { return f.Kill() }
func (f *fakeVMM) Kill() error {
	f.once.Do(func() { f.killed = true; close(f.done) })
	return nil
}

// killedHelper starts a real process, SIGKILLs it and returns it as a
// helper (as virtiofsd would be).
func killedHelper(t *testing.T) helperProcess {
	t.Helper()
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	cmd.Process.Signal(syscall.SIGKILL)
	return helperProcess{name: "virtiofsd", pid: cmd.Process.Pid, done: done, exitErr: func() error { return waitErr }}
}

func TestHelperDeathFailsTheSandboxOnce(t *testing.T) {
	defer func(g time.Duration) { helperExitGrace = g }(helperExitGrace)
	helperExitGrace = 10 * time.Millisecond

	vm := newFakeVMM()
	s := &Sandbox{id: "watch", vmm: vm}
	s.watchHelpers(killedHelper(t), killedHelper(t))
	select {
	case <-vm.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the VM was not stopped after its virtiofsd died")
	}
	err := s.VMError()
	if err == nil || !strings.Contains(err.Error(), "virtiofsd (pid") || !strings.Contains(err.Error(), "killed by signal 9") {
		t.Fatalf("VMError = %v, want virtiofsd's death as the reason", err)
	}
	// A second helper's death does not replace the first reason.
	time.Sleep(50 * time.Millisecond)
	if again := s.VMError(); again.Error() != err.Error() {
		t.Fatalf("reason changed from %v to %v", err, again)
	}
}

func TestHelperExitAfterTheVMIsNoFailure(t *testing.T) {
	defer func(g time.Duration) { helperExitGrace = g }(helperExitGrace)
	helperExitGrace = 200 * time.Millisecond

	for _, tc := range []struct {
		name    string
		prepare func(s *Sandbox, vm *fakeVMM)
	}{
		// virtiofsd exits when QEMU goes away, a moment before QEMU is
		// reaped: the VM's exit is the reason, not virtiofsd's.
		{"VM exits within the grace", func(s *Sandbox, vm *fakeVMM) {
			go func() { time.Sleep(20 * time.Millisecond); vm.Kill() }()
		}},
		// Destroy stops virtiofsd on purpose.
		{"destroy", func(s *Sandbox, vm *fakeVMM) { s.failure.closing.Store(true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := newFakeVMM()
			s := &Sandbox{id: "watch", vmm: vm}
			tc.prepare(s, vm)
			s.watchHelpers(killedHelper(t))
			time.Sleep(3 * helperExitGrace)
			if err := s.failure.reason(); err != nil {
				t.Fatalf("recorded a failure: %v", err)
			}
		})
	}
}

func TestHelperExitedDescribesStatus(t *testing.T) {
	cmd := exec.Command("sh", "-c", "exit 3")
	err := cmd.Run()
	h := helperProcess{name: "virtiofsd", pid: 42, exitErr: func() error { return err }, logTail: func() string { return "  fuse: bad" }}
	msg := helperExited(h).Error()
	for _, want := range []string{"virtiofsd (pid 42) exited with status 3", "VM was stopped", "fuse: bad"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
}

func TestParseMemTotalMiB(t *testing.T) {
	if got := parseMemTotalMiB("MemFree:  100 kB\nMemTotal:       24683568 kB\n"); got != 24105 {
		t.Fatalf("got %d", got)
	}
	if got := parseMemTotalMiB("garbage"); got != 0 {
		t.Fatalf("got %d", got)
	}
}
