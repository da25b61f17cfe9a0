package shim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"

	"github.com/berth-runtime/berth/internal/sandbox"
)

// container is the shim's record of one containerd task.
type container struct {
	id        string
	bundle    string
	isSandbox bool
	// podSandbox: the CRI sandbox (pause) container of a pod.
	podSandbox bool
	// mountedRootfs is bundle/rootfs when the shim mounted containerd's
	// rootfs mounts there (and must unmount them).
	mountedRootfs string

	init *process

	mu          sync.Mutex
	execs       map[string]*process
	paused      bool
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

func (c *container) setPaused(v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.paused = v
}

func (c *container) isPaused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paused
}

// process is a task's init or an exec, as containerd sees it.
type process struct {
	containerID string
	execID      string
	paths       stdioPaths
	io          *hostIO
	sp          *sandbox.Process

	mu         sync.Mutex
	started    bool
	exited     chan struct{}
	exitStatus uint32
	exitedAt   time.Time
	closeOnce  sync.Once
}

func newProcess(containerID, execID string, paths stdioPaths, io *hostIO, sp *sandbox.Process) *process {
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

func (p *process) start(ctx context.Context) error {
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return fmt.Errorf("process %q already started: %w", p.id(), errdefs.ErrFailedPrecondition)
	}
	p.mu.Unlock()
	if p.hasExited() {
		return fmt.Errorf("process %q has exited: %w", p.id(), errdefs.ErrFailedPrecondition)
	}
	if err := p.sp.Start(ctx); err != nil {
		return err
	}
	p.mu.Lock()
	p.started = true
	p.mu.Unlock()
	return nil
}

// setExited records the exit; it reports false if it was already recorded.
func (p *process) setExited(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return false
	default:
	}
	p.exitStatus, p.exitedAt = status, at
	close(p.exited)
	return true
}

func (p *process) hasExited() bool { return isDone(p.exited) }

func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started && !isDone(p.exited)
}

func (p *process) exit() (uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitStatus, p.exitedAt
}

func (p *process) status(c *container) task.Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case isDone(p.exited):
		return task.Status_STOPPED
	case !p.started:
		return task.Status_CREATED
	case c.isPaused():
		return task.Status_PAUSED
	}
	return task.Status_RUNNING
}

// closeIO closes the host ends of the process's stdio once.
func (p *process) closeIO() {
	p.closeOnce.Do(func() {
		if p.io != nil {
			p.io.Close()
		}
	})
}
