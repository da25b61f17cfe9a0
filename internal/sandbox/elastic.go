package sandbox

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/sirupsen/logrus"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/memory"
)

// The elastic controller grows a sandbox's VM when its guest runs short of
// memory and shrinks it back when the memory is idle (docs/memory.md). The
// guest cannot call the host, so the controller long-polls the agent's
// WaitMemoryPressure; memory.ElasticPolicy.Decide makes every decision and
// ResizeMemory, the path `berth resize` and container limits use, carries
// it out (validation, the host cgroup's limit, waiting for the guest).
//
// The guest is not trusted: its figures are bounded by what the host knows
// (memory.Sanitize), a grow never passes the sandbox's ceiling nor the
// host's MemAvailable minus memory.host_reserve, and the poll is
// rate-limited so that an agent that answers at once cannot make the
// controller spin.

// Poll bounds.
const (
	// elasticMinPoll is the shortest time between two polls.
	elasticMinPoll = 200 * time.Millisecond
	// elasticMaxWait is the longest a poll waits when nothing happens;
	// it is also how often an idle sandbox is looked at.
	elasticMaxWait = 5 * time.Second
	// elasticShrinkPoll is the poll period of a VM that could shrink.
	elasticShrinkPoll = time.Second
	// elasticCallSlack is added to a poll's deadline on the host.
	elasticCallSlack = 10 * time.Second
	// throttleSlackBytes: containers this close to their soft limit
	// are still being throttled.
	throttleSlackBytes = 16 << 20
	// elasticMaxBackoff bounds the wait after failed polls.
	elasticMaxBackoff = 30 * time.Second
	// elasticLeaseRenew is how often a resize renews the agent's
	// throttle lease (10 s past each poll's timeout, see the agent's
	// throttleLease): well inside it, so that the brake holds through
	// a grow the guest is slow to take.
	elasticLeaseRenew = 3 * time.Second
)

// ElasticEvent is one grow, shrink or refusal.
type ElasticEvent struct {
	At      time.Time     `json:"at"`
	Action  memory.Action `json:"action"`
	FromMiB int           `json:"fromMiB"`
	ToMiB   int           `json:"toMiB"`
	Reason  string        `json:"reason"`
	Error   string        `json:"error,omitempty"`
}

// ElasticCounts are the controller's counters (Prometheus).
type ElasticCounts struct {
	Grows       uint64 `json:"grows"`
	Shrinks     uint64 `json:"shrinks"`
	Refusals    uint64 `json:"refusals"`
	GrownBytes  uint64 `json:"grownBytes"`
	ShrunkBytes uint64 `json:"shrunkBytes"`
}

// ElasticStatus is the controller as `berth status` shows it.
type ElasticStatus struct {
	Enabled bool `json:"enabled"`
	// Off says why it is not enabled.
	Off        string `json:"off,omitempty"`
	FloorMiB   int    `json:"floorMiB"`
	CeilingMiB int    `json:"ceilingMiB"`
	// The guest's last sample, as bounded by the host.
	GuestAvailableMiB int           `json:"guestAvailableMiB"`
	PSISomeAvg10      float64       `json:"psiSomeAvg10"`
	SoftLimitMiB      int           `json:"softLimitMiB"`
	SampledAt         time.Time     `json:"sampledAt"`
	LastGrow          *ElasticEvent `json:"lastGrow,omitempty"`
	LastShrink        *ElasticEvent `json:"lastShrink,omitempty"`
	LastRefusal       *ElasticEvent `json:"lastRefusal,omitempty"`
	ElasticCounts
}

type availAt struct {
	at       time.Time
	minAvail int
}

// maxWindow bounds the sample window (samples come every 0.2-5 s).
const maxWindow = 4096

type elasticController struct {
	policy memory.ElasticPolicy

	mu          sync.Mutex
	status      ElasticStatus
	lastChange  time.Time // last grow, or failed shrink
	lastShrink  time.Time
	lastRefusal time.Time
	// idleSince starts the current run of samples without pressure;
	// window holds the samples of the last shrink delay (the lowest
	// MemAvailable in it decides how far a shrink may go).
	idleSince time.Time
	window    []availAt
	// manualMiB is the size last asked for by hand (berth resize): the
	// operator's choice, which elastic memory does not shrink below.
	manualMiB  int
	highEvents uint64

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// elasticPolicy turns the configuration into the policy.
func elasticPolicy(cfg *config.Config) memory.ElasticPolicy {
	return memory.ElasticPolicy{
		StepMiB: cfg.Memory.StepMiB, HostReserveMiB: cfg.Memory.HostReserveMiB, ShrinkDelay: cfg.Memory.ShrinkDelay.Duration,
		GuestReserveMiB: memory.DefaultGuestReserveMiB, GrowMarginMiB: memory.DefaultGrowMarginMiB,
		KeepMarginMiB: memory.DefaultKeepMarginMiB, MinShrinkMiB: memory.DefaultMinShrinkMiB,
		PSIGrowAbove: memory.DefaultPSIGrowAbove, RefusalBackoff: memory.DefaultRefusalBackoff,
	}
}

// newElastic sets up the controller; startElastic runs it.
func (s *Sandbox) newElastic() *elasticController {
	e := &elasticController{policy: elasticPolicy(s.cfg), stop: make(chan struct{}), done: make(chan struct{})}
	l := s.memory.limits
	e.status.FloorMiB, e.status.CeilingMiB = l.BootMiB, l.MaxMiB
	switch {
	case !s.cfg.Memory.Elastic:
		e.status.Off = "memory.elastic = false"
	case l.Mechanism != memory.VirtioMem:
		e.status.Off = "needs virtio-mem hot-plug (hypervisor.memory_hotplug), the sandbox has " + string(l.Mechanism)
	default:
		e.status.Enabled = true
	}
	return e
}

// startElastic runs the controller until the sandbox ends.
func (s *Sandbox) startElastic() {
	e := s.elastic
	if !e.status.Enabled {
		close(e.done)
		return
	}
	go s.runElastic()
}

// stopElastic ends the controller and waits for it (Destroy).
func (s *Sandbox) stopElastic() {
	if s.elastic == nil {
		return
	}
	s.elastic.stopOnce.Do(func() { close(s.elastic.stop) })
	select {
	case <-s.elastic.done:
	case <-time.After(elasticCallSlack):
	}
}

// SetElasticBounds tells the controller how far the sandbox may shrink
// (the memory its containers' limits need) and grow (the pod's limits when
// every container has one, else the sandbox's maximum). The owner calls it
// whenever containers or their limits change.
func (s *Sandbox) SetElasticBounds(floorMiB, ceilingMiB int) {
	e := s.elastic
	if e == nil {
		return
	}
	l := s.memory.limits
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status.FloorMiB = min(max(floorMiB, l.BootMiB), l.MaxMiB)
	e.status.CeilingMiB = min(max(ceilingMiB, e.status.FloorMiB), l.MaxMiB)
}

// setManualSize records a resize asked for by hand.
func (s *Sandbox) setManualSize(sizeMiB int) {
	if e := s.elastic; e != nil {
		e.mu.Lock()
		e.manualMiB = sizeMiB
		e.mu.Unlock()
	}
}

// ElasticEnabled says whether the controller runs.
func (s *Sandbox) ElasticEnabled() bool {
	if s.elastic == nil {
		return false
	}
	s.elastic.mu.Lock()
	defer s.elastic.mu.Unlock()
	return s.elastic.status.Enabled
}

// ElasticStatus reports the controller.
func (s *Sandbox) ElasticStatus() ElasticStatus {
	e := s.elastic
	if e == nil {
		return ElasticStatus{Off: "no controller"}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}

func (s *Sandbox) runElastic() {
	e := s.elastic
	defer close(e.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-e.stop:
		case <-s.vmm.Done():
		}
		cancel()
	}()
	log := logrus.WithField("sandbox", s.id)
	var seq uint64
	backoff := time.Second
	failures := 0
	for ctx.Err() == nil {
		start := time.Now()
		st := s.elasticState(start)
		// Above its floor the VM may shrink: sample every second, so
		// that the lowest MemAvailable of the last shrink delay is known
		// to the second and a freed workload is given back promptly. At
		// the floor only pressure matters, which the agent reports at
		// once anyway.
		wait := elasticMaxWait
		if st.CurrentMiB > max(st.FloorMiB, st.BootMiB) {
			wait = elasticShrinkPoll
		}
		req := &api.WaitMemoryPressureRequest{
			AfterSeq:          seq,
			GrowBelowBytes:    uint64(e.policy.GrowBelowMiB()) << 20,
			PsiSomeAvg10Above: e.policy.PSIGrowAbove,
			TimeoutMs:         uint32(wait / time.Millisecond),
			Throttle:          e.policy.CanGrow(st, start),
			ReserveBytes:      uint64(e.policy.GuestReserveMiB) << 20,
		}
		cctx, ccancel := context.WithTimeout(ctx, wait+elasticCallSlack)
		resp, err := s.agent.WaitMemoryPressure(cctx, req)
		ccancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if errdefs.IsNotImplemented(errgrpc.ToNative(err)) {
				log.WithError(err).Warn("elastic memory off: the guest agent does not serve WaitMemoryPressure (rebuild the guest image)")
				e.mu.Lock()
				e.status.Enabled, e.status.Off = false, "the guest agent is too old (no WaitMemoryPressure)"
				e.mu.Unlock()
				return
			}
			if failures == 0 {
				log.WithError(err).Warn("elastic memory: poll the guest agent")
			}
			failures++
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, elasticMaxBackoff)
			continue
		}
		failures, backoff = 0, time.Second
		// An agent that answers at once must not make this spin.
		sleepCtx(ctx, elasticMinPoll-time.Since(start))
		if ctx.Err() != nil {
			return
		}
		seq = resp.Seq
		s.elasticStep(ctx, req, resp)
	}
}

// holdThrottleLease renews the agent's throttle lease every renew until
// the returned function is called. The controller polls nothing while it
// resizes the VM, and a grow the guest is slow to take (its kernel short
// of memory for the page structures) can outlast the lease: the agent
// would then lift the containers' soft limit in the middle of the grow,
// just when the brake is what keeps its OOM killer away. Each renewal is
// a poll that cannot report (AfterSeq beyond any sample) and returns
// after the agent's shortest wait.
func (s *Sandbox) holdThrottleLease(ctx context.Context, req *api.WaitMemoryPressureRequest, renew time.Duration) (stop func()) {
	if !req.Throttle {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	renewal := &api.WaitMemoryPressureRequest{
		AfterSeq:       math.MaxUint64,
		GrowBelowBytes: req.GrowBelowBytes, PsiSomeAvg10Above: req.PsiSomeAvg10Above,
		// TimeoutMs 0: the agent's shortest wait, to which it clamps
		// every request.
		TimeoutMs: 0,
		Throttle:  true, ReserveBytes: req.ReserveBytes,
	}
	go func() {
		defer close(done)
		t := time.NewTicker(renew)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, ccancel := context.WithTimeout(ctx, renew)
			_, err := s.agent.WaitMemoryPressure(cctx, renewal)
			ccancel()
			if err != nil && ctx.Err() == nil {
				logrus.WithField("sandbox", s.id).WithError(err).Debug("elastic memory: renew the throttle lease")
			}
		}
	}()
	return func() { cancel(); <-done }
}

// elasticState reads the sandbox's sizes and the host's free memory.
func (s *Sandbox) elasticState(now time.Time) memory.ElasticState {
	_, current, _ := s.memoryFigures()
	avail, err := hostAvailableMiB()
	if err != nil {
		avail = 0 // unknown: grows are refused, which is safe
	}
	e := s.elastic
	e.mu.Lock()
	defer e.mu.Unlock()
	return memory.ElasticState{
		Limits: s.memory.limits, FloorMiB: max(e.status.FloorMiB, e.manualMiB), CurrentMiB: current, CeilingMiB: e.status.CeilingMiB,
		HostAvailableMiB: avail, LastChange: e.lastChange, LastShrink: e.lastShrink, LastRefusal: e.lastRefusal,
	}
}

// elasticStep decides on one sample and carries the decision out.
func (s *Sandbox) elasticStep(ctx context.Context, req *api.WaitMemoryPressureRequest, resp *api.MemoryPressure) {
	e := s.elastic
	now := time.Now()
	st := s.elasticState(now)
	total, avail, minAvail, psi := memory.Sanitize(st.CurrentMiB, resp.MemTotalBytes, resp.MemAvailableBytes, resp.MinAvailableBytes, resp.PsiSomeAvg10)

	e.mu.Lock()
	// Throttled now, not only since the last sample: a throttle that
	// happened while a grow was under way is over once the agent has
	// raised the soft limit, and must not buy a second step.
	throttled := resp.HighEvents > e.highEvents && resp.ContainersHighBytes > 0 &&
		resp.ContainersBytes+throttleSlackBytes >= resp.ContainersHighBytes
	e.highEvents = resp.HighEvents
	sample := memory.GuestSample{MemTotalMiB: total, AvailableMiB: avail, PSISomeAvg10: psi, Throttled: throttled}
	if e.policy.Pressure(sample) {
		e.idleSince = time.Time{}
	} else if e.idleSince.IsZero() {
		e.idleSince = now
	}
	sample.IdleSince = e.idleSince
	sample.IdleMinAvailMiB, sample.IdleFirstAvailMiB = e.windowMin(now, minAvail)
	e.status.GuestAvailableMiB, e.status.PSISomeAvg10, e.status.SampledAt = avail, psi, now
	e.status.SoftLimitMiB = int(min(resp.ContainersHighBytes>>20, uint64(st.CurrentMiB)))
	e.mu.Unlock()

	d := e.policy.Decide(st, sample, now)
	log := logrus.WithField("sandbox", s.id).WithField("from_mib", d.FromMiB).WithField("target_mib", d.TargetMiB)
	switch d.Action {
	case memory.Refuse:
		log.WithField("reason", d.Reason).Warn("elastic memory: grow refused")
		e.record(ElasticEvent{At: now, Action: d.Action, FromMiB: d.FromMiB, ToMiB: d.FromMiB, Reason: d.Reason})
	case memory.Grow, memory.Shrink:
		log.WithField("reason", d.Reason).Infof("elastic memory: %s", d.Action)
		stopLease := s.holdThrottleLease(ctx, req, elasticLeaseRenew)
		ms, err := s.elasticResize(ctx, d)
		stopLease()
		if ctx.Err() != nil || errors.Is(err, errElasticStale) {
			return // the sandbox is being destroyed, or the decision is stale
		}
		ev := ElasticEvent{At: now, Action: d.Action, FromMiB: d.FromMiB, ToMiB: ms.GuestCurrentMiB, Reason: d.Reason}
		if err != nil {
			ev.Error = err.Error()
			if d.Action == memory.Grow && errdefs.IsInvalidArgument(err) && ms.GuestCurrentMiB == d.FromMiB {
				// memory.Check refused it: the host's MemAvailable
				// fell between the decision and the resize.
				ev.Action = memory.Refuse
			}
			log.WithError(err).WithField("reached_mib", ms.GuestCurrentMiB).Warnf("elastic memory: %s", d.Action)
		}
		e.record(ev)
	}
}

// windowMin adds a sample to the window and returns the lowest
// MemAvailable seen during the last shrink delay, and the oldest.
func (e *elasticController) windowMin(now time.Time, minAvail int) (low, first int) {
	e.window = append(e.window, availAt{now, minAvail})
	cut := 0
	for cut < len(e.window) && (now.Sub(e.window[cut].at) > e.policy.ShrinkDelay || len(e.window)-cut > maxWindow) {
		cut++
	}
	e.window = e.window[cut:]
	low = minAvail
	for _, w := range e.window {
		low = min(low, w.minAvail)
	}
	return low, e.window[0].minAvail
}

// elasticResize carries a decision out under the memory lock, after
// checking it against the sizes and bounds of now: the owner may have
// resized the VM or moved the bounds (a container's limit) since the
// sample was decided on, and a stale shrink must not undo that.
func (s *Sandbox) elasticResize(ctx context.Context, d memory.Decision) (MemoryStatus, error) {
	s.memory.mu.Lock()
	defer s.memory.mu.Unlock()
	e := s.elastic
	e.mu.Lock()
	floor, ceiling := max(e.status.FloorMiB, e.manualMiB), e.status.CeilingMiB
	e.mu.Unlock()
	cur := s.memory.currentMiB
	target := d.TargetMiB
	switch d.Action {
	case memory.Grow:
		target = min(target, ceiling)
	case memory.Shrink:
		target = max(target, floor)
	}
	if cur != d.FromMiB || (d.Action == memory.Grow && target <= cur) || (d.Action == memory.Shrink && target >= cur) {
		return s.memoryStatusLocked(ctx), fmt.Errorf("elastic %s to %d MiB dropped: the VM changed meanwhile (now %d MiB, bounds %d-%d MiB): %w",
			d.Action, d.TargetMiB, cur, floor, ceiling, errElasticStale)
	}
	return s.resizeMemoryLocked(ctx, target)
}

// errElasticStale: a decision overtaken by another resize.
var errElasticStale = errors.New("stale decision")

// record books an event: counters, the last event of its kind, and the
// times the policy's hysteresis and backoff depend on.
func (e *elasticController) record(ev ElasticEvent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	moved := uint64(0)
	if ev.ToMiB > ev.FromMiB {
		moved = uint64(ev.ToMiB-ev.FromMiB) << 20
	} else {
		moved = uint64(ev.FromMiB-ev.ToMiB) << 20
	}
	switch {
	case ev.Action == memory.Refuse:
		e.status.Refusals++
		e.lastRefusal = ev.At
		e.status.LastRefusal = &ev
		return
	case ev.Action == memory.Grow && moved > 0:
		e.status.Grows++
		e.status.GrownBytes += moved
		e.status.LastGrow = &ev
	case ev.Action == memory.Shrink && moved > 0:
		e.status.Shrinks++
		e.status.ShrunkBytes += moved
		e.status.LastShrink = &ev
		e.lastShrink = ev.At
		// Idleness goes on, and the next shrink may follow after
		// memory.ShrinkSpacing, sized by samples of the new size only:
		// samples from before (or taken while the guest was still
		// offlining, when isolated pages count as used) would keep the
		// VM larger than the workload needs. That holds too for a
		// shrink that stopped short but gave something back: the guest
		// is still freeing (its offlining timed out while migrating),
		// and waiting a whole shrink delay again kept an idle 1.8 GiB
		// pod at 966 MiB for 20 s. Only a shrink that gave nothing
		// back backs off, below.
		e.window = e.window[:0]
		return
	case ev.Action == memory.Grow:
		e.status.LastGrow = &ev
	case ev.Action == memory.Shrink:
		e.status.LastShrink = &ev
	}
	// A grow, or a shrink that gave nothing back, restarts the shrink
	// delay; idleness is measured afresh at the new size.
	e.lastChange = ev.At
	e.idleSince = time.Time{}
	e.window = e.window[:0]
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
