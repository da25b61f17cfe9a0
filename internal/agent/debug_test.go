package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

func TestDebugExecIsOffByDefault(t *testing.T) {
	_, err := New(Options{}).DebugExec(context.Background(), &api.DebugExecRequest{Args: []string{"true"}})
	if err = errgrpc.ToNative(err); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "guest_exec") {
		t.Fatalf("DebugExec without the boot flag = %v, want FailedPrecondition naming guest_exec", err)
	}
}

func TestDebugExecRunsAndCapsOutput(t *testing.T) {
	s := New(Options{DebugExec: true})
	resp, err := s.DebugExec(context.Background(), &api.DebugExecRequest{
		Args: []string{"sh", "-c", "cat; echo err >&2; head -c 3000000 /dev/zero; exit 3"}, Stdin: []byte("in\n")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ExitCode != 3 || !strings.HasPrefix(string(resp.Stdout), "in\n") || string(resp.Stderr) != "err\n" {
		t.Fatalf("exit %d stdout %.10q stderr %q", resp.ExitCode, resp.Stdout, resp.Stderr)
	}
	if len(resp.Stdout) != debugOutputLimit {
		t.Fatalf("stdout is %d bytes, want the %d cap", len(resp.Stdout), debugOutputLimit)
	}
	resp, err = s.DebugExec(context.Background(), &api.DebugExecRequest{Args: []string{"sh", "-c", "sleep 30 & sleep 30"}, TimeoutSeconds: 1})
	if err != nil || resp.ExitCode != 128+9 {
		t.Fatalf("a command past its timeout: %v, exit %d, want 137", err, resp.GetExitCode())
	}
}
