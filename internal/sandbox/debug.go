package sandbox

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// DebugExecResult is what a debug command did in the guest.
type DebugExecResult struct {
	ExitCode int    `json:"exitCode"`
	Stdout   []byte `json:"stdout"`
	Stderr   []byte `json:"stderr"`
}

// debugExecRequest is the management API's request.
type debugExecRequest struct {
	Args           []string `json:"args"`
	Stdin          []byte   `json:"stdin,omitempty"`
	TimeoutSeconds uint32   `json:"timeoutSeconds,omitempty"`
}

// maxDebugTimeoutSeconds bounds one debug command.
const maxDebugTimeoutSeconds = 600

// DebugExec runs args as root in the guest, outside any container. It is
// refused unless the sandbox's configuration has [debug] guest_exec =
// true (the host then also told the agent at boot; the agent refuses
// otherwise).
func (s *Sandbox) DebugExec(ctx context.Context, args []string, stdin []byte, timeoutSeconds uint32) (DebugExecResult, error) {
	if !s.cfg.Debug.GuestExec {
		return DebugExecResult{}, fmt.Errorf("debug exec into sandbox %q is disabled: set [debug] guest_exec = true in the configuration the sandbox was started with: %w", s.id, errdefs.ErrFailedPrecondition)
	}
	if len(args) == 0 {
		return DebugExecResult{}, fmt.Errorf("debug exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	if timeoutSeconds > maxDebugTimeoutSeconds {
		return DebugExecResult{}, fmt.Errorf("debug exec timeout %ds is over %ds: %w", timeoutSeconds, maxDebugTimeoutSeconds, errdefs.ErrInvalidArgument)
	}
	resp, err := s.agent.DebugExec(ctx, &api.DebugExecRequest{Args: args, Stdin: stdin, TimeoutSeconds: timeoutSeconds})
	if err != nil {
		return DebugExecResult{}, s.rpcError("debug exec", err)
	}
	return DebugExecResult{ExitCode: int(resp.ExitCode), Stdout: resp.Stdout, Stderr: resp.Stderr}, nil
}

// DebugExec asks the sandbox's owner to run args in the guest.
func (c *Client) DebugExec(ctx context.Context, args []string, stdin []byte, timeoutSeconds uint32) (DebugExecResult, error) {
	var r DebugExecResult
	err := c.do(ctx, "POST", "/debug/exec", debugExecRequest{Args: args, Stdin: stdin, TimeoutSeconds: timeoutSeconds}, &r)
	return r, err
}
