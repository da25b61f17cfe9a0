package sandbox

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// clockAgent counts the host's SetClock calls and checks what they carry.
type clockAgent struct {
	api.AgentService
	calls   atomic.Int32
	badTime atomic.Bool
}

func (a *clockAgent) SetClock(_ context.Context, r *api.SetClockRequest) (*api.SetClockResponse, error) {
	a.calls.Add(1)
	if d := time.Since(r.GetHostTime().AsTime()); !r.GetHostTime().IsValid() || d < 0 || d > time.Minute {
		a.badTime.Store(true)
	}
	return &api.SetClockResponse{GuestTime: r.GetHostTime()}, nil
}

// The host sends the guest its time as soon as the agent answers, and the
// keeper ends with the VM rather than outliving the sandbox.
func TestGuestClockIsSetAtConnectAndTheKeeperEndsWithTheVM(t *testing.T) {
	g := newFakeGuest(256)
	agent := &clockAgent{}
	s := &Sandbox{id: "clock", vmm: g, agent: agent}
	done := make(chan struct{})
	go func() { s.keepGuestClock(context.Background()); close(done) }()
	for deadline := time.Now().Add(5 * time.Second); agent.calls.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no SetClock within 5 s of the connect")
		}
	}
	if agent.badTime.Load() {
		t.Error("SetClock did not carry the host's current time")
	}
	g.Kill()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the clock keeper still runs 1 s after the VM ended")
	}
	if n := agent.calls.Load(); n != 1 {
		t.Errorf("%d SetClock calls before the recheck at %v, want 1", n, guestClockRecheck)
	}
}
