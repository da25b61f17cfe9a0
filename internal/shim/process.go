package shim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
)

// container is the shim's record of one containerd task.
type container struct {
	id        string
	bundle    string
	isSandbox bool
	// podSandbox: the CRI sandbox (pause) container of a pod.
	podSandbox bool
	// ownPIDNS: the container has a PID namespace of its own (CRI
	// NamespaceMode_CONTAINER), which a debug container may target.
	ownPIDNS bool
	// mountedRootfs is bundle/rootfs when the shim mounted containerd's
	// rootfs mounts there (and must unmount them).
	mountedRootfs string

	init *process

	mu          sync.Mutex
	execs       map[string]*process
	oomReported uint64 // OOM kills already reported
	// memLimitBytes is the container's memory limit (0: none), which
	// sizes the pod's VM.
	memLimitBytes int64
}

func (c *container) memLimit() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.memLimitBytes
}

func (c *container) setMemLimit(v int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.memLimitBytes = v
}

func (c *container) oomKills() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.oomReported
}

// updateOOMKills records a kill count; it reports whether it was new.
func (c *container) updateOOMKills(n uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n <= c.oomReported {
		return false
	}
	c.oomReported = n
	return true
}

func (c *container) process(execID string) (*process, error) {
	if execID == "" {
		if c.init == nil {
			return nil, fmt.Errorf("container %q is being created: %w", c.id, errdefs.ErrFailedPrecondition)
		}
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q in %q: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (c *container) addExec(p *process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.execs[p.execID] = p
}

func (c *container) removeExec(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.execs, id)
}

func (c *container) execList() []*process {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*process, 0, len(c.execs))
	for _, e := range c.execs {
		out = append(out, e)
	}
	return out
}

// process is a task's init or an exec, as containerd sees it. Its state
// changes only through next (state.go), under mu.
type process struct {
	containerID string
	execID      string
	paths       stdioPaths
	io          *hostIO
	sp          guestProcess

	mu    sync.Mutex
	state procState
	// execsStarting counts exec starts in flight in an init's container:
	// a Pause meanwhile would freeze the exec half-way into the container.
	execsStarting int
	exited        chan struct{}
	exitStatus    uint32
	exitedAt      time.Time
	closeOnce     sync.Once
}

func newProcess(containerID, execID string, paths stdioPaths, io *hostIO, sp guestProcess) *process {
	return &process{containerID: containerID, execID: execID, paths: paths, io: io, sp: sp, exited: make(chan struct{})}
}

// id is the process id containerd uses: the exec id, or the container id
// for the init.
func (p *process) id() string {
	if p.execID == "" {
		return p.containerID
	}
	return p.execID
}

// do applies op to the process's state.
func (p *process) do(op procOp) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.doLocked(op)
}

func (p *process) doLocked(op procOp) error {
	st, err := next(p.state, op)
	if err != nil {
		return fmt.Errorf("%s %q: %w", p.kind(), p.id(), err)
	}
	p.state = st
	return nil
}

func (p *process) kind() string {
	if p.execID == "" {
		return "container"
	}
	return "exec"
}

func (p *process) currentState() procState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// start runs the process in the guest; init is the container's init, which
// must let an exec start (not paused, not stopped) for as long as it takes.
func (p *process) start(ctx context.Context, init *process) error {
	if p != init {
		if err := init.beginExecStart(); err != nil {
			return err
		}
		defer init.endExecStart()
	}
	if err := p.do(opStart); err != nil {
		return err
	}
	if err := p.sp.Start(ctx); err != nil {
		p.do(opStartFailed)
		return err
	}
	return p.do(opStarted)
}

func (p *process) beginExecStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.doLocked(opExec); err != nil {
		return err
	}
	p.execsStarting++
	return nil
}

func (p *process) endExecStart() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.execsStarting--
}

// beginPause moves a running init to pausing, unless an exec is being
// started in its container.
func (p *process) beginPause() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.execsStarting > 0 && p.state == stateRunning {
		return fmt.Errorf("container %q: an exec is being started, retry: %w", p.id(), errdefs.ErrFailedPrecondition)
	}
	return p.doLocked(opPause)
}

// setExited records the exit; it reports false if it was already recorded.
func (p *process) setExited(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if isDone(p.exited) {
		return false
	}
	p.exitStatus, p.exitedAt = status, at
	p.doLocked(opExit) // cannot fail
	close(p.exited)
	return true
}

func (p *process) hasExited() bool { return isDone(p.exited) }

func (p *process) exit() (uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitStatus, p.exitedAt
}

func (p *process) status() task.Status { return p.currentState().taskStatus() }

// closeIO closes the host ends of the process's stdio once.
func (p *process) closeIO() {
	p.closeOnce.Do(func() {
		if p.io != nil {
			p.io.Close()
		}
	})
}
