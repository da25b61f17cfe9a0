package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-runtime/berth/internal/qemu/qmp"
)

// StartOptions tune how the QEMU process is run, not what it emulates.
type StartOptions struct {
	// DieWithParent makes the kernel SIGKILL QEMU when the thread that
	// started it exits (PR_SET_PDEATHSIG), so a crashed shim leaves no
	// orphan VM. Go only ends threads whose goroutine exits while locked
	// to them, so in practice this means "when this process exits".
	DieWithParent bool
	// Stderr, if set, receives a copy of QEMU's stdout and stderr. Write
	// errors are ignored; a slow writer slows QEMU's logging.
	Stderr io.Writer
	// Credential, if set, runs QEMU as that user and groups instead of
	// as the caller. Everything QEMU opens by path must then be
	// accessible to it (the caller prepares that); disks are passed as
	// descriptors (HotplugBlock).
	Credential *syscall.Credential
	// Started, if set, is called with QEMU's pid right after the process
	// is created and before Start waits for QMP, so that the caller can
	// move it into a cgroup before the guest's memory is touched. An
	// error kills QEMU and fails Start.
	Started func(pid int) error
	// Batch runs QEMU and all its threads as SCHED_BATCH with
	// BatchSlice (startBatch).
	Batch bool
}

// VM is a running QEMU process and its QMP connection.
type VM struct {
	machine Machine // as started; hot-plug needs its memory layout
	cmd     *exec.Cmd
	pid     int
	output  *tailWriter
	console *consoleRelay // nil unless the console log is capped
	sockets []string      // QEMU-created sockets to remove once it is gone

	mu     sync.Mutex
	client *qmp.Client
	reaped bool
	// nextFdSet and blockFdSets track the fd sets of hot-plugged disks
	// (hotplug.go), by device ID.
	nextFdSet   int
	blockFdSets map[string]int

	done    chan struct{}
	exitErr error // set before done is closed
}

// DefaultShutdownTimeout bounds Shutdown's graceful phase when its context
// has no deadline.
const DefaultShutdownTimeout = 10 * time.Second

// qmpPollInterval is how often Start looks for the QMP socket. QEMU
// creates it while parsing its command line, tens of milliseconds after
// exec, so polling costs little and needs no inotify.
const qmpPollInterval = 10 * time.Millisecond

// Start validates m, starts QEMU in its own process group, and connects to
// its QMP socket once QEMU is ready. ctx bounds only the start: if it ends
// first, or QEMU exits, Start kills QEMU, waits for it, removes the
// sockets and returns an error (with QEMU's last stderr lines when it
// exited on its own). The VM outlives ctx.
func Start(ctx context.Context, m Machine, opts StartOptions) (*VM, error) {
	args, err := m.Args()
	if err != nil {
		return nil, err
	}
	if err := checkFiles(m); err != nil {
		return nil, err
	}
	if err := clearStaleSocket(m.QMPSocket); err != nil {
		return nil, err
	}

	cmd := exec.Command(m.Binary, args...)
	out := newTailWriter(opts.Stderr)
	cmd.Stdout = out
	cmd.Stderr = out
	// Wait normally returns once QEMU's output is drained; should a
	// helper QEMU started keep the pipe open, don't let that keep a dead
	// VM looking alive.
	cmd.WaitDelay = time.Second
	// A process group of its own keeps terminal signals (^C to a shim run
	// by hand) away from QEMU: its lifetime is ours to decide.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if opts.DieWithParent {
		// Go sets the death signal after the credentials, which would
		// otherwise clear it.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	cmd.SysProcAttr.Credential = opts.Credential
	// The console pipe is ConsoleFD (the first extra file); the taps
	// follow it (tapFD).
	console, err := openConsole(m, cmd)
	if err != nil {
		return nil, err
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, m.extraFiles()...)
	start := cmd.Start
	if opts.Batch {
		start = func() error { return startBatch(cmd) }
	}
	if err := start(); err != nil {
		console.abort()
		return nil, fmt.Errorf("starting qemu %s: %w", m.Binary, err)
	}
	console.started()

	v := &VM{
		machine: m,
		cmd:     cmd,
		pid:     cmd.Process.Pid,
		output:  out,
		console: console,
		sockets: []string{m.QMPSocket},
		done:    make(chan struct{}),
	}
	for _, p := range m.SerialPorts {
		v.sockets = append(v.sockets, p.SocketPath)
	}
	go v.wait()
	if opts.Started != nil {
		if err := opts.Started(v.pid); err != nil {
			v.Kill()
			return nil, err
		}
	}

	c, err := v.connectQMP(ctx, m.QMPSocket)
	if err != nil {
		v.Kill()
		return nil, err
	}
	v.mu.Lock()
	if v.reaped {
		v.mu.Unlock()
		c.Close()
		return nil, fmt.Errorf("qemu exited during start: %w", v.exitErr)
	}
	v.client = c
	v.mu.Unlock()
	return v, nil
}

// checkFiles turns a missing kernel or initrd into an error naming the
// field; QEMU's own message ("could not load kernel") does not say which.
func checkFiles(m Machine) error {
	for _, f := range []struct{ field, path string }{
		{"Kernel", m.Kernel},
		{"Initrd", m.Initrd},
		{"RootImage", m.RootImage},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return &FieldError{Field: f.field, Problem: err.Error()}
		}
	}
	return nil
}

// clearStaleSocket removes a socket left at path by a QEMU that was
// killed. QEMU itself unlinks whatever is at the path before listening, so
// without this check a mistaken path would silently take the QMP socket of
// another, live VM; and Start must not connect to a stale socket while the
// new QEMU is still starting.
func clearStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("QMP socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("QMP socket %s: exists and is not a socket; refusing to replace it", path)
	}
	if conn, err := net.Dial("unix", path); err == nil {
		conn.Close()
		return fmt.Errorf("QMP socket %s: another process is listening on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale QMP socket: %w", err)
	}
	return nil
}

// connectQMP waits until QEMU accepts QMP. QEMU listens early but only
// sends the greeting from its main loop, after every device is realised,
// so a successful handshake also means the command line was accepted.
func (v *VM) connectQMP(ctx context.Context, path string) (*qmp.Client, error) {
	tick := time.NewTicker(qmpPollInterval)
	defer tick.Stop()
	var lastErr error
	for {
		if _, err := os.Stat(path); err == nil {
			c, err := qmp.Dial(ctx, path)
			if err == nil {
				return c, nil
			}
			lastErr = err
		}
		select {
		case <-v.done:
			return nil, fmt.Errorf("qemu exited during start: %w", v.exitErr)
		case <-ctx.Done():
			if lastErr == nil {
				return nil, fmt.Errorf("waiting for qemu (pid %d) to create QMP socket %s: %w", v.pid, path, ctx.Err())
			}
			return nil, fmt.Errorf("waiting for QMP on %s (last error: %v): %w", path, lastErr, ctx.Err())
		case <-tick.C:
		}
	}
}

// wait reaps QEMU, then cleans up after it and closes done.
func (v *VM) wait() {
	err := v.cmd.Wait() // returns after stdout/stderr are drained
	exitErr := v.describeExit(err)
	v.console.wait()

	v.mu.Lock()
	v.reaped = true
	v.exitErr = exitErr
	c := v.client
	v.mu.Unlock()
	if c != nil {
		c.Close()
	}
	// QEMU unlinks its listening sockets on a clean exit but not when
	// killed. Only sockets are removed, never a file someone else put at
	// the path.
	for _, p := range v.sockets {
		if fi, err := os.Lstat(p); err == nil && fi.Mode().Type() == fs.ModeSocket {
			os.Remove(p)
		}
	}
	close(v.done)
}

func (v *VM) describeExit(err error) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("waiting for qemu (pid %d): %w", v.pid, err)
	}
	pe := &ProcessError{Pid: v.pid, ExitCode: ee.ExitCode(), Output: v.output.Tail()}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		pe.Signal = ws.Signal()
	}
	return pe
}

// ProcessError says how QEMU ended when it did not exit with status 0.
type ProcessError struct {
	Pid      int
	ExitCode int            // -1 when killed by a signal
	Signal   syscall.Signal // 0 unless killed by a signal
	// Output is the last lines QEMU wrote to stderr or stdout, which
	// usually hold the reason, e.g. "qemu-system-x86_64: -device foo:
	// 'foo' is not a valid device model name".
	Output string
}

func (e *ProcessError) Error() string {
	var s string
	if e.Signal != 0 {
		s = fmt.Sprintf("qemu (pid %d) was killed by signal %d (%s)", e.Pid, int(e.Signal), e.Signal)
	} else {
		s = fmt.Sprintf("qemu (pid %d) exited with status %d", e.Pid, e.ExitCode)
	}
	if e.Output != "" {
		s += ": " + e.Output
	}
	return s
}

// Pid is QEMU's process ID.
func (v *VM) Pid() int { return v.pid }

// QMP returns the QMP client. It stays valid until the VM is gone, after
// which its calls fail with qmp.ErrClosed.
func (v *VM) QMP() *qmp.Client {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.client
}

// Done is closed once QEMU has exited, been reaped, and its sockets have
// been removed.
func (v *VM) Done() <-chan struct{} { return v.done }

// ExitError describes how QEMU ended: nil for exit status 0 (a QMP quit,
// a guest power-off, or a guest reboot or panic under -no-reboot),
// otherwise a *ProcessError. It is nil until Done is closed. After Kill,
// or a Shutdown that had to kill, it reports signal 9.
func (v *VM) ExitError() error {
	select {
	case <-v.done:
		return v.exitErr
	default:
		return nil
	}
}

// Shutdown asks QEMU to quit over QMP and waits for it to exit. If it is
// still running when ctx ends (DefaultShutdownTimeout if ctx has no
// deadline), it is killed. Either way Shutdown returns only once QEMU is
// gone and its sockets are removed, and then returns nil; ExitError tells
// whether the quit was clean. It is idempotent and safe to call while QEMU
// dies on its own or Kill runs.
func (v *VM) Shutdown(ctx context.Context) error {
	select {
	case <-v.done:
		return nil
	default:
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultShutdownTimeout)
		defer cancel()
	}
	if c := v.QMP(); c != nil {
		// The reply may be lost when QEMU closes the socket first; the
		// process exit below is what counts.
		_ = c.Execute(ctx, "quit", nil, nil)
	}
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return v.Kill()
	}
}

// Kill sends SIGKILL to QEMU and waits until it is reaped and its sockets
// are removed. It is idempotent.
func (v *VM) Kill() error {
	select {
	case <-v.done:
		return nil
	default:
	}
	// os.Process knows whether the process was already reaped, so this
	// cannot hit a recycled pid.
	if err := v.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing qemu (pid %d): %w", v.pid, err)
	}
	<-v.done
	return nil
}

// tailWriter keeps the end of QEMU's output for error messages and copies
// everything to an optional writer.
type tailWriter struct {
	mu   sync.Mutex
	buf  []byte
	copy io.Writer
}

const (
	tailKeepBytes   = 8 << 10
	tailReportLines = 8
	tailReportBytes = 2 << 10
)

func newTailWriter(copy io.Writer) *tailWriter { return &tailWriter{copy: copy} }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailKeepBytes {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailKeepBytes:]...)
	}
	t.mu.Unlock()
	if t.copy != nil {
		t.copy.Write(p) // a broken log sink must not break QEMU's pipe
	}
	return len(p), nil
}

// Tail returns the last few non-empty lines, joined by "; " so the result
// fits in one log line.
func (t *tailWriter) Tail() string {
	t.mu.Lock()
	s := string(t.buf)
	t.mu.Unlock()
	return lastLines(s, tailReportLines, tailReportBytes)
}

func lastLines(s string, maxLines, maxBytes int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	out := strings.Join(lines, "; ")
	if len(out) > maxBytes {
		out = "..." + out[len(out)-maxBytes:]
	}
	return out
}
