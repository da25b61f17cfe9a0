package agent

import (
	"errors"
	"fmt"
	"os"

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

// signalInit sends sig to a container's init.
func signalInit(c *container, p *process, sig unix.Signal) error {
	err := p.handle().Signal(sig)
	if errors.Is(err, os.ErrProcessDone) || p.hasExited() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signal container %q: %w", c.id, err)
	}
	if sig == unix.SIGKILL && !c.privatePidNS {
		killAll(c, sig)
	}
	return nil
}

// killAll sends sig to every process in the container's cgroup (read
// without libcontainer's lock).
func killAll(c *container, sig unix.Signal) {
	pids, _ := c.processes()
	for _, pid := range pids {
		unix.Kill(pid, sig)
	}
}

// errPaused refuses to start an exec in a frozen container: runc's init
// would join the frozen cgroup and hang there (runc's shim says the same).
func errPaused(id string) error {
	return fmt.Errorf("container %q: cannot exec in a paused state: %w", id, errdefs.ErrFailedPrecondition)
}
