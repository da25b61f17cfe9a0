package agent

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// process is one process the agent runs: a container's init or an exec.
//
// Its standard streams are pipes (or a pty) whose far ends the host attaches
// later, one transport stream each (see attach). Output written before the
// host attaches waits in the pipe, so nothing is lost between Create and
// the host's attach.
type process struct {
	id    string // exec id; "" for a container's init
	stdio *api.Stdio

	lp *libcontainer.Process
	// holder is set instead of lp for a pod sandbox (holder.go).
	holder *os.Process

	// Agent-side ends of the stdio pipes, or the pty master.
	stdin  *os.File
	stdout *os.File
	stderr *os.File
	pty    console.Console
	// Child-side ends, closed once the process has started.
	childFiles []*os.File

	mu        sync.Mutex
	started   bool
	pid       int
	exited    chan struct{}
	status    uint32
	exitedAt  time.Time
	attached  map[api.StreamKind]bool
	copiesWG  sync.WaitGroup
	stdinOnce sync.Once

	// consoleParent receives the pty master from runc's init.
	consoleParent *os.File
	// ioReady is closed once the agent-side stdio ends exist: right after
	// setupIO for pipes, after the process started for a pty.
	ioReady     chan struct{}
	ioReadyOnce sync.Once
}

func newProcess(id string, stdio *api.Stdio, lp *libcontainer.Process) *process {
	if stdio == nil {
		stdio = &api.Stdio{}
	}
	return &process{id: id, stdio: stdio, lp: lp, exited: make(chan struct{}), attached: map[api.StreamKind]bool{}, ioReady: make(chan struct{})}
}

// setupIO gives the libcontainer process its stdio: pipes, or a console
// socket over which runc's init sends back the pty master.
func (p *process) setupIO() error {
	if p.stdio.Terminal {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("console socket pair: %w", err)
		}
		p.consoleParent = os.NewFile(uintptr(fds[0]), "console-parent")
		child := os.NewFile(uintptr(fds[1]), "console-child")
		p.lp.ConsoleSocket = child
		p.childFiles = append(p.childFiles, child)
		return nil
	}
	pipe := func(childReads bool) (agentEnd, childEnd *os.File, err error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, err
		}
		if childReads {
			return w, r, nil
		}
		return r, w, nil
	}
	if p.stdio.Stdin {
		a, c, err := pipe(true)
		if err != nil {
			return err
		}
		p.stdin, p.lp.Stdin = a, c
		p.childFiles = append(p.childFiles, c)
	}
	if p.stdio.Stdout {
		a, c, err := pipe(false)
		if err != nil {
			return err
		}
		p.stdout, p.lp.Stdout = a, c
		p.childFiles = append(p.childFiles, c)
	}
	if p.stdio.Stderr {
		a, c, err := pipe(false)
		if err != nil {
			return err
		}
		p.stderr, p.lp.Stderr = a, c
		p.childFiles = append(p.childFiles, c)
	}
	p.markIOReady()
	return nil
}

func (p *process) markIOReady() { p.ioReadyOnce.Do(func() { close(p.ioReady) }) }

// afterStart closes the child's ends of the pipes (the child holds its own
// copies now, and the output pipes only reach EOF once every writer has
// closed them) and, with a terminal, receives the pty master.
func (p *process) afterStart() error {
	for _, f := range p.childFiles {
		f.Close()
	}
	p.childFiles = nil
	if p.consoleParent == nil {
		return nil
	}
	defer func() { p.consoleParent.Close(); p.consoleParent = nil }()
	master, err := recvFile(p.consoleParent)
	if err != nil {
		return fmt.Errorf("receive pty master: %w", err)
	}
	c, err := console.ConsoleFromFile(master)
	if err != nil {
		master.Close()
		return fmt.Errorf("pty master: %w", err)
	}
	p.pty = c
	p.markIOReady()
	return nil
}

// recvFile receives one file descriptor sent with SCM_RIGHTS (runc's init
// sends the pty master this way).
func recvFile(sock *os.File) (*os.File, error) {
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), name, oob, 0)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("expected one control message, got %d (%v)", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("expected one fd, got %d (%v)", len(fds), err)
	}
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

// procHandle is a started process as the agent waits for and signals it:
// a *libcontainer.Process, or a pod's namespace holder.
type procHandle interface {
	Pid() (int, error)
	Wait() (*os.ProcessState, error)
	Signal(os.Signal) error
}

func (p *process) handle() procHandle {
	if p.holder != nil {
		return holderProcess{p.holder}
	}
	return p.lp
}

// markStarted records the pid and starts the goroutine that reaps the
// process (through libcontainer, or os.Process for a holder). onExit, if
// set, runs after the process is reaped and before its exit is recorded.
func (p *process) markStarted(onExit func()) error {
	h := p.handle()
	pid, err := h.Pid()
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.started, p.pid = true, pid
	p.mu.Unlock()
	go func() {
		state, err := h.Wait()
		status := exitStatus(state, err)
		// Output may still be in flight; the host waits for the stdio
		// streams to end on its own, so the exit is recorded at once.
		if onExit != nil {
			onExit()
		}
		p.mu.Lock()
		p.status, p.exitedAt = status, time.Now()
		p.mu.Unlock()
		close(p.exited)
	}()
	return nil
}

// exitStatus turns a wait result into the shell convention: the exit code,
// or 128+signal for a process killed by a signal.
func exitStatus(state *os.ProcessState, err error) uint32 {
	if state == nil {
		if ee, ok := err.(interface{ ExitCode() int }); ok && ee.ExitCode() >= 0 {
			return uint32(ee.ExitCode())
		}
		return 255
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok {
		if ws.Signaled() {
			return 128 + uint32(ws.Signal())
		}
		return uint32(ws.ExitStatus())
	}
	return uint32(state.ExitCode())
}

// attach connects a host stream to one of the process's standard streams.
// Each stream can be attached once.
func (p *process) attach(kind api.StreamKind, conn net.Conn) error {
	p.mu.Lock()
	if p.attached[kind] {
		p.mu.Unlock()
		return fmt.Errorf("stream %v already attached: %w", kind, errdefs.ErrAlreadyExists)
	}
	p.attached[kind] = true
	p.mu.Unlock()

	var src io.Reader
	switch kind {
	case api.StreamKind_STREAM_STDIN:
		var dst io.Writer
		switch {
		case p.pty != nil:
			dst = p.pty
		case p.stdin != nil:
			dst = p.stdin
		default:
			return fmt.Errorf("process has no stdin: %w", errdefs.ErrFailedPrecondition)
		}
		go func() {
			io.Copy(dst, conn)
			conn.Close()
			// EOF from the host closes the process's stdin (a pty has
			// no EOF; the host sends ^D itself).
			if p.pty == nil {
				p.closeStdin()
			}
		}()
		return nil
	case api.StreamKind_STREAM_STDOUT:
		if p.pty != nil {
			src = p.pty
		} else if p.stdout != nil {
			src = p.stdout
		}
	case api.StreamKind_STREAM_STDERR:
		if p.pty == nil && p.stderr != nil {
			src = p.stderr
		}
	}
	if src == nil {
		return fmt.Errorf("process has no %v: %w", kind, errdefs.ErrFailedPrecondition)
	}
	p.copiesWG.Add(1)
	go func() {
		defer p.copiesWG.Done()
		io.Copy(conn, src)
		// A pty master reads EIO once the last slave fd closes: that is
		// its EOF.
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		conn.Close()
	}()
	return nil
}

func (p *process) closeStdin() {
	p.stdinOnce.Do(func() {
		if p.stdin != nil {
			p.stdin.Close()
		}
	})
}

func (p *process) resize(width, height uint32) error {
	if p.pty == nil {
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	return p.pty.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// release closes the agent's ends of the stdio once the process is gone.
func (p *process) release() {
	p.closeStdin()
	for _, f := range []*os.File{p.stdout, p.stderr} {
		if f != nil {
			f.Close()
		}
	}
	if p.pty != nil {
		p.pty.Close()
	}
	for _, f := range p.childFiles {
		f.Close()
	}
	if p.consoleParent != nil {
		p.consoleParent.Close()
	}
}

func (p *process) isStarted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}
