package shim

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"

	"github.com/berth-runtime/berth/internal/sandbox"
)

// stdioPaths are the stdio locations containerd gives a task: FIFO paths,
// or URIs (file:///path, binary:///path?args) for log drivers.
type stdioPaths struct {
	stdin, stdout, stderr string
	terminal              bool
}

// hostIO is a process's stdio opened on the host side.
type hostIO struct {
	sandbox.IO
	closers []io.Closer
	// stdinHold is the shim's own write end of the stdin FIFO, as runc's
	// shim keeps one: the copy to the guest sees EOF only once it is
	// closed (containerd's CloseIO) and every client's end is closed too,
	// so a client that detaches or a containerd that restarts does not
	// end the program's input, and a CloseIO that races ahead of data
	// still in the FIFO does not lose it.
	stdinHold io.Closer
	// wait, if set, waits for a logging binary to finish after the
	// output writers were closed.
	wait func()
}

// CloseStdinHold lets the program's stdin end: the copy to the guest
// reads what the clients wrote, then EOF, and closes the stream, which
// the guest turns into EOF for the program.
func (h *hostIO) CloseStdinHold() {
	if h.stdinHold != nil {
		h.stdinHold.Close()
	}
}

// Close closes every end the shim opened.
func (h *hostIO) Close() {
	for _, c := range h.closers {
		c.Close()
	}
	if h.wait != nil {
		h.wait()
	}
}

// openStdio opens what containerd asked for. Output to a FIFO blocks until
// containerd reads, which gives the same back-pressure runc's shim has.
func openStdio(ctx context.Context, p stdioPaths, containerID, namespace string) (_ *hostIO, retErr error) {
	h := &hostIO{IO: sandbox.IO{Terminal: p.terminal}}
	defer func() {
		if retErr != nil {
			h.Close()
		}
	}()
	if p.stdin != "" {
		f, err := fifo.OpenFifo(ctx, p.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s: %w", p.stdin, err)
		}
		h.Stdin = f
		h.closers = append(h.closers, f)
		hold, err := fifo.OpenFifo(ctx, p.stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s for writing: %w", p.stdin, err)
		}
		h.stdinHold = hold
		h.closers = append(h.closers, hold)
	}
	u, err := url.Parse(p.stdout)
	if err == nil && (u.Scheme == "binary" || u.Scheme == "file") {
		return h, openLogURI(ctx, h, u, containerID, namespace)
	}
	open := func(path string) (io.WriteCloser, error) {
		if path == "" {
			return nil, nil
		}
		f, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		h.closers = append(h.closers, f)
		return f, nil
	}
	stdout, err := open(p.stdout)
	if err != nil {
		return nil, err
	}
	if stdout != nil {
		h.Stdout = stdout
	}
	if !p.terminal {
		stderr, err := open(p.stderr)
		if err != nil {
			return nil, err
		}
		if stderr != nil {
			h.Stderr = stderr
		}
	}
	return h, nil
}

// openLogURI handles containerd's log URIs, as runc's shim does:
// file:///path appends stdout and stderr to one file; binary:///path?k=v
// starts a logging binary that reads stdout on fd 3 and stderr on fd 4 and
// closes fd 5 when it is ready.
func openLogURI(ctx context.Context, h *hostIO, u *url.URL, containerID, namespace string) error {
	switch u.Scheme {
	case "file":
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("open log file %s: %w", u.Path, err)
		}
		h.closers = append(h.closers, f)
		h.Stdout = f
		if !h.Terminal {
			h.Stderr = f
		}
		return nil
	case "binary":
		var args []string
		for k, vs := range u.Query() {
			args = append(args, k)
			if len(vs) > 0 && vs[0] != "" {
				args = append(args, vs[0])
			}
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			return err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			return err
		}
		readyR, readyW, err := os.Pipe()
		if err != nil {
			return err
		}
		cmd := exec.Command(u.Path, args...)
		cmd.Env = append(os.Environ(), "CONTAINER_ID="+containerID, "CONTAINER_NAMESPACE="+namespace)
		cmd.ExtraFiles = []*os.File{outR, errR, readyW}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start logging binary %s: %w", u.Path, err)
		}
		outR.Close()
		errR.Close()
		readyW.Close()
		ready := make(chan struct{})
		go func() { io.Copy(io.Discard, readyR); readyR.Close(); close(ready) }()
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			return fmt.Errorf("logging binary %s did not signal ready within 10s", u.Path)
		case <-ctx.Done():
			cmd.Process.Kill()
			cmd.Wait()
			return ctx.Err()
		}
		h.Stdout, h.closers = outW, append(h.closers, outW)
		if !h.Terminal {
			h.Stderr = errW
		}
		h.closers = append(h.closers, errW)
		h.wait = func() {
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
		return nil
	}
	return fmt.Errorf("stdio URI scheme %q: %w", u.Scheme, errdefs.ErrNotImplemented)
}
