package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// A Kill never waits behind a Start. libcontainer's Container methods
// (Signal, Run, Exec, Pause, Resume, State, Destroy) share one mutex, and
// Run holds it while runc's init joins the container: if that init hangs
// (its root file system's virtiofsd died, the cgroup it joins is frozen),
// Container.Signal would hang with it, and so would the host's Kill. So
// the agent signals the init through its own process handle (os.Process:
// no pid reuse) and, where the container has no pid namespace of its own
// (SIGKILL of pid 1 then kills nothing else), every process of its cgroup,
// which is what Container.Signal does, minus the lock.

// signalInit sends sig to a container's init. A SIGKILL of a container
// without its own pid namespace reaches the whole cgroup even when the
// init has already gone: what the init left behind is what the host is
// waiting for.
func signalInit(c *container, p *process, sig unix.Signal) error {
	if sig == unix.SIGKILL && !c.privatePidNS {
		defer killAll(c, sig)
	}
	err := p.handle().Signal(sig)
	if errors.Is(err, os.ErrProcessDone) || p.hasExited() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signal container %q: %w", c.id, err)
	}
	return nil
}

// killAllRounds bounds killAll's SIGKILL rounds where the guest's cgroup
// has no cgroup.kill (cgroup v1): a process that forks between the read
// of the cgroup and the signal escapes one round, never every round of a
// fork loop that runs at the speed of a guest vCPU.
const killAllRounds = 10

// killAll sends sig to every process in the container's cgroup (read
// without libcontainer's lock). A SIGKILL goes through cgroup.kill where
// the cgroup has one (v2, Linux 5.14+), which the kernel applies to the
// whole cgroup at once, forks in flight included, as runc's
// signalAllProcesses does; otherwise it is sent again while the cgroup
// lists processes not signalled yet, so children forked meanwhile die too.
func killAll(c *container, sig unix.Signal) {
	if sig == unix.SIGKILL {
		if dir := c.cgroupPaths[""]; dir != "" {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err == nil {
				return
			}
		}
	}
	signalled := map[int]bool{}
	for round := 0; round < killAllRounds; round++ {
		pids, _ := c.processes()
		fresh := 0
		for _, pid := range pids {
			if !signalled[pid] {
				signalled[pid] = true
				fresh++
				unix.Kill(pid, sig)
			}
		}
		if fresh == 0 || sig != unix.SIGKILL {
			return
		}
	}
}

// errPaused refuses to start an exec in a frozen container: runc's init
// would join the frozen cgroup and hang there (runc's shim says the same).
func errPaused(id string) error {
	return fmt.Errorf("container %q: cannot exec in a paused state: %w", id, errdefs.ErrFailedPrecondition)
}
