package sandbox

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/memory"
)

func testElastic() *elasticController {
	return &elasticController{policy: memory.ElasticPolicy{ShrinkDelay: 10 * time.Second}}
}

// The shrink is sized by the lowest MemAvailable of the last shrink
// delay only: what a workload needed a minute ago must not keep the VM
// big once it has freed it.
func TestElasticWindowMin(t *testing.T) {
	e := testElastic()
	t0 := time.Now()
	if got, first := e.windowMin(t0, 150); got != 150 || first != 150 {
		t.Errorf("first sample: %d %d", got, first)
	}
	if got, first := e.windowMin(t0.Add(5*time.Second), 1600); got != 150 || first != 150 {
		t.Errorf("within the delay the low sample counts: %d %d", got, first)
	}
	if got, first := e.windowMin(t0.Add(11*time.Second), 1650); got != 1600 || first != 1600 {
		t.Errorf("after the delay the low sample is gone: %d %d", got, first)
	}
	for i := 0; i < 2*maxWindow; i++ {
		e.windowMin(t0.Add(11*time.Second), 1700)
	}
	if len(e.window) > maxWindow {
		t.Errorf("window holds %d samples, bound %d", len(e.window), maxWindow)
	}
}

func TestElasticRecord(t *testing.T) {
	e := testElastic()
	now := time.Now()
	e.idleSince = now.Add(-time.Minute)
	e.window = []availAt{{now, 100}}
	e.record(ElasticEvent{At: now, Action: memory.Grow, FromMiB: 256, ToMiB: 512, Reason: "r"})
	e.record(ElasticEvent{At: now, Action: memory.Shrink, FromMiB: 512, ToMiB: 300, Reason: "r"})
	e.record(ElasticEvent{At: now, Action: memory.Refuse, FromMiB: 300, ToMiB: 300, Reason: "full"})
	// A shrink that got nowhere is no shrink, but restarts the delay.
	later := now.Add(time.Second)
	e.record(ElasticEvent{At: later, Action: memory.Shrink, FromMiB: 300, ToMiB: 300, Reason: "r", Error: "in use"})
	st := e.status
	if st.Grows != 1 || st.GrownBytes != 256<<20 || st.Shrinks != 1 || st.ShrunkBytes != 212<<20 || st.Refusals != 1 {
		t.Errorf("counts %+v", st.ElasticCounts)
	}
	if st.LastRefusal == nil || st.LastRefusal.Reason != "full" || !e.lastRefusal.Equal(now) {
		t.Errorf("last refusal %+v", st.LastRefusal)
	}
	if st.LastShrink == nil || st.LastShrink.Error != "in use" || !e.lastChange.Equal(later) || !e.idleSince.IsZero() || len(e.window) != 0 {
		t.Errorf("after a failed shrink: last %+v, lastChange %v, idleSince %v, window %v", st.LastShrink, e.lastChange, e.idleSince, e.window)
	}
}

// A shrink that stopped short but gave memory back keeps the pod idle:
// the next shrink follows after memory.ShrinkSpacing, not after a whole
// shrink delay (a partial unplug of an idle 1.8 GiB pod once left it at
// 966 MiB for 20 s more).
func TestElasticPartialShrinkKeepsIdleness(t *testing.T) {
	e := testElastic()
	now := time.Now()
	idle := now.Add(-time.Minute)
	e.idleSince, e.lastChange = idle, idle
	e.window = []availAt{{now, 1500}}
	e.record(ElasticEvent{At: now, Action: memory.Shrink, FromMiB: 1792, ToMiB: 966, Reason: "idle", Error: "reached 966 MiB: resize stopped short"})
	if !e.idleSince.Equal(idle) || !e.lastChange.Equal(idle) || !e.lastShrink.Equal(now) || len(e.window) != 0 {
		t.Errorf("after a partial shrink: idleSince %v (want %v), lastChange %v, lastShrink %v, window %v", e.idleSince, idle, e.lastChange, e.lastShrink, e.window)
	}
	st := memory.ElasticState{Limits: memory.Limits{Mechanism: memory.VirtioMem, BootMiB: 256, MaxMiB: 4096}, CurrentMiB: 966, FloorMiB: 256, CeilingMiB: 4096, LastChange: e.lastChange, LastShrink: e.lastShrink}
	sample := memory.GuestSample{MemTotalMiB: 966, AvailableMiB: 800, IdleSince: e.idleSince, IdleMinAvailMiB: 800, IdleFirstAvailMiB: 800}
	if d := e.policy.Decide(st, sample, now.Add(memory.ShrinkSpacing+time.Millisecond)); d.Action != memory.Shrink {
		t.Errorf("decision %v after the shrink spacing (%s): want the shrink to go on", d.Action, d.Reason)
	}
	if e.status.Shrinks != 1 || e.status.ShrunkBytes != (1792-966)<<20 {
		t.Errorf("counts %+v", e.status.ElasticCounts)
	}
}

func TestSetElasticBoundsClamps(t *testing.T) {
	s := &Sandbox{}
	s.memory.limits = memory.Limits{Mechanism: memory.VirtioMem, BootMiB: 256, MaxMiB: 4096}
	s.elastic = testElastic()
	s.SetElasticBounds(100, 1<<30)
	if st := s.ElasticStatus(); st.FloorMiB != 256 || st.CeilingMiB != 4096 {
		t.Errorf("bounds %d..%d, want 256..4096", st.FloorMiB, st.CeilingMiB)
	}
	s.SetElasticBounds(1280, 512)
	if st := s.ElasticStatus(); st.FloorMiB != 1280 || st.CeilingMiB != 1280 {
		t.Errorf("bounds %d..%d, want the ceiling raised to the floor", st.FloorMiB, st.CeilingMiB)
	}
	(&Sandbox{}).SetElasticBounds(1, 2) // no controller: no panic
}

// leaseAgent records the WaitMemoryPressure calls it gets.
type leaseAgent struct {
	api.AgentService
	mu    sync.Mutex
	calls []*api.WaitMemoryPressureRequest
}

func (a *leaseAgent) WaitMemoryPressure(_ context.Context, r *api.WaitMemoryPressureRequest) (*api.MemoryPressure, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, r)
	return &api.MemoryPressure{}, nil
}

func (a *leaseAgent) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.calls)
}

// A resize renews the agent's throttle lease while it lasts, with polls
// that keep the brake on and cannot report a sample the controller would
// not read, and stops renewing when it ends; without a brake to keep
// (the host cannot grow) it renews nothing.
func TestAResizeKeepsTheGuestsBrakeOnUntilItEnds(t *testing.T) {
	agent := &leaseAgent{}
	s := &Sandbox{id: "lease", agent: agent}
	req := &api.WaitMemoryPressureRequest{AfterSeq: 7, GrowBelowBytes: 136 << 20, Throttle: true, ReserveBytes: 112 << 20, TimeoutMs: 1000}
	stop := s.holdThrottleLease(context.Background(), req, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	stop()
	n := agent.count()
	if n < 3 {
		t.Fatalf("%d lease renewals in 100 ms at one per 10 ms, want several", n)
	}
	for _, r := range agent.calls {
		if !r.Throttle || r.ReserveBytes != req.ReserveBytes || r.GrowBelowBytes != req.GrowBelowBytes || r.AfterSeq != math.MaxUint64 || r.TimeoutMs > 1000 {
			t.Fatalf("renewal %+v: want the brake's settings, AfterSeq beyond any sample and a short wait", r)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if after := agent.count(); after != n {
		t.Errorf("%d renewals after the resize ended", after-n)
	}

	idle := &leaseAgent{}
	s.agent = idle
	stop = s.holdThrottleLease(context.Background(), &api.WaitMemoryPressureRequest{Throttle: false}, 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	stop()
	if n := idle.count(); n != 0 {
		t.Errorf("%d renewals of a lease that throttles nothing", n)
	}
}
