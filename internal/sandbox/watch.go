package sandbox

import (
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// A sandbox depends on host processes besides the VMM: virtiofsd serves
// every container's root file system. When such a helper dies, the VM
// keeps running, but every file system request in the guest waits for an
// answer that never comes: processes hang in the kernel, runc's init with
// them, and the agent with it. So the sandbox fails as a whole, once: the
// reason is recorded and the VM is killed. Its death ends every process
// wait with "the VM exited" (the shim reports each container exited) and
// lets Delete proceed without the guest.

// helperExitGrace is how long a helper's exit waits for the VM's before it
// counts as the helper's own failure: virtiofsd exits by itself when QEMU
// goes away, a moment before QEMU is reaped.
var helperExitGrace = time.Second

// helperProcess is a host process the VM cannot run without.
type helperProcess struct {
	name string
	pid  int
	// done is closed once the process has been reaped.
	done <-chan struct{}
	// exitErr says how it ended (nil for status 0); called after done.
	exitErr func() error
	// logTail returns the end of its log, for the failure message.
	logTail func() string
}

// failure records why a sandbox failed, once.
type failure struct {
	// closing is set by Destroy: helpers stopping then are expected.
	closing atomic.Bool
	once    sync.Once
	mu      sync.Mutex
	err     error
}

func (f *failure) reason() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// fail ends the sandbox because of err: it is recorded (VMError reports
// it) and the VM is killed. Only the first failure counts.
func (s *Sandbox) fail(err error) {
	s.failure.once.Do(func() {
		s.failure.mu.Lock()
		s.failure.err = err
		s.failure.mu.Unlock()
		logrus.WithField("sandbox", s.id).WithError(err).Error("sandbox failed; stopping the VM")
		if kerr := s.vmm.Kill(); kerr != nil {
			logrus.WithField("sandbox", s.id).WithError(kerr).Error("kill the VM of a failed sandbox")
		}
	})
}

// watchHelpers fails the sandbox when one of its helpers exits while the VM
// runs and Destroy has not begun.
func (s *Sandbox) watchHelpers(helpers ...helperProcess) {
	grace := helperExitGrace
	for _, h := range helpers {
		go func() {
			select {
			case <-h.done:
			case <-s.vmm.Done():
				return
			}
			if s.failure.closing.Load() {
				return
			}
			select {
			case <-s.vmm.Done():
				return // the VM went first; its exit is the reason
			case <-time.After(grace):
			}
			if s.failure.closing.Load() {
				return
			}
			s.fail(helperExited(h))
		}()
	}
}

// helperExited describes a helper's unexpected exit.
func helperExited(h helperProcess) error {
	how := "exited with status 0"
	var ee *exec.ExitError
	if err := h.exitErr(); errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			how = fmt.Sprintf("was killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
		} else {
			how = fmt.Sprintf("exited with status %d", ee.ExitCode())
		}
	} else if err != nil {
		how = "ended: " + err.Error()
	}
	msg := fmt.Sprintf("%s (pid %d) %s while the VM was running; the VM was stopped, since its containers cannot run without it", h.name, h.pid, how)
	if h.logTail != nil {
		if t := h.logTail(); t != "" && t != "(empty)" {
			msg += "; its last log lines:\n" + t
		}
	}
	return errors.New(msg)
}

// virtiofsdHelper describes virtiofsd for watchHelpers.
func virtiofsdHelper(v *virtiofsd) helperProcess {
	return helperProcess{
		name:    "virtiofsd",
		pid:     v.cmd.Process.Pid,
		done:    v.done,
		exitErr: func() error { return v.waitErr },
		logTail: func() string { return tail(v.log.Name(), 5) },
	}
}
