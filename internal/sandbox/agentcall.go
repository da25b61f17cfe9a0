package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"time"

	"github.com/containerd/ttrpc"
)

// Every call the host makes to the guest agent has a deadline. A guest is
// not trusted to answer: its kernel can oops under the agent (CI once
// hung for more than ten minutes on a guest that died reading sysfs), or
// a hostile agent can simply stay silent. Without a deadline the shim
// would wait forever and containerd with it.
//
// The deadlines are generous for software emulation (TCG), where a
// container create takes about a second; a caller's shorter deadline wins.
// Wait and WaitOOM are long polls that end with a process or the VM, so
// they carry none; the VM watcher ends them when the VM dies.
var agentCallTimeouts = map[string]time.Duration{
	"Info":         10 * time.Second,
	"Create":       60 * time.Second,
	"Start":        30 * time.Second,
	"Exec":         30 * time.Second,
	"Kill":         10 * time.Second,
	"Pids":         10 * time.Second,
	"ResizePty":    10 * time.Second,
	"CloseIO":      10 * time.Second,
	"Delete":       30 * time.Second,
	"Shutdown":     10 * time.Second,
	"Pause":        10 * time.Second,
	"Resume":       10 * time.Second,
	"Update":       30 * time.Second,
	"Stats":        10 * time.Second,
	"WaitDevice":   60 * time.Second,
	"OnlineMemory": 60 * time.Second,
	"Wait":         0,
	"WaitOOM":      0,
}

// defaultAgentCallTimeout covers methods added later and not listed.
const defaultAgentCallTimeout = 30 * time.Second

// ErrAgentTimeout says the guest agent did not answer in time.
var ErrAgentTimeout = errors.New("the guest agent did not answer in time")

// agentCallTimeout returns the deadline for a ttrpc method
// ("/berth.agent.v1.Agent/Create"); 0 means none.
func agentCallTimeout(fullMethod string) time.Duration {
	if t, ok := agentCallTimeouts[path.Base(fullMethod)]; ok {
		return t
	}
	return defaultAgentCallTimeout
}

// agentDeadlines is the ttrpc client interceptor that applies them.
func agentDeadlines(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
	timeout := agentCallTimeout(info.FullMethod)
	if timeout == 0 {
		return invoke(ctx, req, resp)
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= timeout {
		return invoke(ctx, req, resp)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := invoke(cctx, req, resp)
	if err != nil && cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		return fmt.Errorf("%s: no answer within %s: %w", path.Base(info.FullMethod), timeout,
			errors.Join(ErrAgentTimeout, context.DeadlineExceeded))
	}
	return err
}

// newAgentRPCClient wraps a connection to the agent in a ttrpc client
// whose every call has a deadline.
func newAgentRPCClient(conn net.Conn) *ttrpc.Client {
	return ttrpc.NewClient(conn, ttrpc.WithUnaryClientInterceptor(agentDeadlines))
}
