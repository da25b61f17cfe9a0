package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// CmdlineDebugExec is the kernel command line parameter by which the host
// enables DebugExec (berth.debug_exec=1). The host sets it only when its
// configuration says [debug] guest_exec = true.
const CmdlineDebugExec = "berth.debug_exec"

// debugOutputLimit caps each of a debug command's output streams.
const debugOutputLimit = 1 << 20

// DebugExec runs a command as root in the guest, outside any container.
// It exists for the hostile-guest tests and for debugging; it is off
// unless the host enabled it at boot.
func (s *Service) DebugExec(ctx context.Context, req *api.DebugExecRequest) (*api.DebugExecResponse, error) {
	resp, err := s.debugExec(ctx, req)
	return resp, toGRPC(err)
}

func (s *Service) debugExec(ctx context.Context, req *api.DebugExecRequest) (*api.DebugExecResponse, error) {
	if !s.opts.DebugExec {
		return nil, fmt.Errorf("debug exec is disabled in this guest (the host enables it with [debug] guest_exec = true): %w", errdefs.ErrFailedPrecondition)
	}
	if len(req.Args) == 0 {
		return nil, fmt.Errorf("debug exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	timeout := time.Duration(req.TimeoutSeconds) * time.Second
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, req.Args[0], req.Args[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	cmd.Dir = "/"
	cmd.Stdin = bytes.NewReader(req.Stdin)
	stdout, stderr := &cappedBuffer{limit: debugOutputLimit}, &cappedBuffer{limit: debugOutputLimit}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Its own process group, so a timeout kills what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := cmd.Run()
	resp := &api.DebugExecResponse{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			resp.ExitCode = 128 + int32(ws.Signal())
		} else {
			resp.ExitCode = int32(ee.ExitCode())
		}
	default:
		return nil, fmt.Errorf("debug exec %s: %v: %w", req.Args[0], err, errdefs.ErrInvalidArgument)
	}
	return resp, nil
}

// cappedBuffer keeps the first limit bytes written to it and drops the
// rest (the command is not stalled by a full pipe). The buffer is a field,
// not embedded, so that io.Copy cannot bypass Write through ReadFrom.
type cappedBuffer struct {
	buf   bytes.Buffer
	limit int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (b *cappedBuffer) Bytes() []byte { return b.buf.Bytes() }
