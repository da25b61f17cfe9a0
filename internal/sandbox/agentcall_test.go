package sandbox

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
)

// Every agent call but the long polls gets a deadline; a caller's shorter
// one is kept.
func TestAgentCallsHaveDeadlines(t *testing.T) {
	for _, tc := range []struct {
		method      string
		callerLimit time.Duration
		want        time.Duration // 0: no deadline
	}{
		{"/berth.agent.v1.Agent/OnlineMemory", 0, 60 * time.Second},
		{"/berth.agent.v1.Agent/Create", 0, 60 * time.Second},
		{"/berth.agent.v1.Agent/Kill", 0, 10 * time.Second},
		{"/berth.agent.v1.Agent/Kill", time.Second, time.Second},
		{"/berth.agent.v1.Agent/SomethingNew", 0, defaultAgentCallTimeout},
		{"/berth.agent.v1.Agent/Wait", 0, 0},
		{"/berth.agent.v1.Agent/WaitOOM", 0, 0},
	} {
		ctx := context.Background()
		if tc.callerLimit > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, tc.callerLimit)
			defer cancel()
		}
		var got time.Duration
		invoke := func(ctx context.Context, _ *ttrpc.Request, _ *ttrpc.Response) error {
			if d, ok := ctx.Deadline(); ok {
				got = time.Until(d)
			}
			return nil
		}
		if err := agentDeadlines(ctx, nil, nil, &ttrpc.UnaryClientInfo{FullMethod: tc.method}, invoke); err != nil {
			t.Fatal(err)
		}
		if tc.want == 0 && got != 0 || tc.want != 0 && (got > tc.want || got < tc.want-time.Second) {
			t.Errorf("%s (caller limit %s): deadline in %s, want %s", tc.method, tc.callerLimit, got, tc.want)
		}
	}
}
