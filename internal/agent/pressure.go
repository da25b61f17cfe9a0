package agent

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// Elastic memory, the guest's half. The agent cannot call the host, so the
// host long-polls WaitMemoryPressure and the agent answers when the guest
// runs short of memory (or when the host's timeout passes, which is how the
// host learns that memory is idle). The host decides what to do with a
// sample and treats every figure in it as untrusted.
//
// A guest can allocate far faster than the host can plug memory (one
// read() into a 1.5 GiB buffer charges it all in one system call), and
// without a brake the guest kernel's OOM killer would fire long before the
// host has answered. The brake is the containers' parent cgroup, /berth
// (see oci.GuestSpec): while the host says it can still grow the VM, the
// agent sets its memory.high so that the containers leave reserve_bytes of
// the guest free. Above memory.high the kernel throttles the allocating
// task (reclaim, then sleeps) instead of killing anything, the host sees
// the pressure and grows the VM, and the next sample raises memory.high.
// When the host cannot grow any more (the pod's ceiling, or a full host)
// it says so and the soft limit goes: from then on the guest's own OOM
// killer decides, as it would on a host without Berth. The soft limit is
// also a lease: if the host stops asking (a shim that hangs or died), the
// agent lifts it rather than throttle containers forever.

// Sampling and its bounds. The host's requests are clamped: a host bug
// must not make the agent spin or sleep forever either.
//
// The sampler runs at two speeds. Each sample costs the guest ~7 ms of
// emulated CPU (four /proc and cgroup files read and parsed), so sampling
// every 100 ms kept an idle pod's QEMU at 7-9% of a host core, against
// 0.6% without elastic memory. Far from pressure (MemAvailable at least
// farMargin above the grow threshold, no stall, no new throttling) it
// samples slowly; otherwise every pressureSampleEvery. How slowly follows
// the host's poll: a VM above its floor is polled every second, and the
// host sizes a shrink by the lowest MemAvailable of those samples, so the
// slow cycle is then pressureSampleIdle; a VM at its floor is polled
// every 5 s and only pressure matters there, which the brake below
// reports at once, so the slow cycle stretches to the host's timeout (at
// most pressureSampleIdleMax). A fast allocation between two slow samples
// is caught by the brake: above memory.high the kernel throttles and
// notifies memory.events, which the sampler watches (inotify) and answers
// with a sample at once. Without that watch (no containers' cgroup yet,
// or inotify failed) it samples fast, as before.
const (
	pressureSampleEvery = 100 * time.Millisecond
	pressureSampleIdle  = time.Second
	// pressureSampleIdleMax bounds the slow cycle of a VM at its floor.
	pressureSampleIdleMax = 5 * time.Second
	farMargin             = 16 << 20
	minPressureTimeout    = 100 * time.Millisecond
	maxPressureTimeout    = 60 * time.Second
	// throttleLease is how long a throttle request outlives its call.
	throttleLease = 10 * time.Second
	// minContainersHigh is the smallest soft limit set: a tiny limit
	// would throttle even a shell.
	minContainersHigh = 16 << 20
	// highSlack avoids rewriting memory.high for small changes.
	highSlack = 2 << 20
)

// containersCgroup is the containers' parent cgroup in the guest (v2),
// relative to the sysfs root; oci.GuestSpec puts every container below it.
const containersCgroup = "sys/fs/cgroup/berth"

// pressureSample is one reading of the guest's memory.
type pressureSample struct {
	seq                    uint64
	at                     time.Time
	memTotal, memAvailable uint64
	psiSomeAvg10           float64
	psiSomeTotal           uint64
	psiFullTotal           uint64
	containers, high       uint64
	highEvents             uint64
}

// pressureWatch samples the guest's memory while someone asks.
type pressureWatch struct {
	sysRoot string
	// stopped ends the sampler: the agent never stops it (it lives as
	// long as the guest), tests do, before their fake /proc is removed.
	stopped  chan struct{}
	stopOnce sync.Once

	mu      sync.Mutex
	cond    *sync.Cond
	last    pressureSample
	running bool
	// throttle settings of the latest request, valid until leaseEnd.
	throttle bool
	reserve  uint64
	leaseEnd time.Time
	// lapseLogged: the lapse of the current lease was logged.
	lapseLogged bool
	// idleEvery is the slow cycle the latest request asks for (see
	// pressureSampleIdleMax); retime wakes the sampler when it shortens.
	idleEvery time.Duration
	retime    chan struct{}
	// growBelow is the latest request's grow threshold (0: none).
	growBelow uint64
	// highSet is the memory.high the agent wrote (0: "max").
	highSet uint64
	// reportedHigh is the throttle count of the last answer: new
	// throttling since then is pressure.
	reportedHigh uint64
}

func newPressureWatch(sysRoot string) *pressureWatch {
	w := &pressureWatch{sysRoot: sysRoot, stopped: make(chan struct{}), retime: make(chan struct{}, 1), idleEvery: pressureSampleIdle}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// stop ends the sampler, if it runs.
func (w *pressureWatch) stop() { w.stopOnce.Do(func() { close(w.stopped) }) }

// start runs the sampler for the rest of the agent's life; the first
// request starts it, so a sandbox without elastic memory never samples.
// (Its lease lifts the soft limit when the host stops asking.)
func (w *pressureWatch) start() {
	w.mu.Lock()
	if w.running {
		w.mu.Unlock()
		return
	}
	w.running = true
	w.mu.Unlock()
	// The VM grows on demand, so its RAM now is no bound for one
	// allocation: the kernel's heuristic overcommit would refuse a
	// 1.5 GiB malloc in a 256 MiB guest that could grow to hold it.
	// Kubernetes nodes run with the same setting (the kubelet sets
	// vm.overcommit_memory = 1).
	os.WriteFile(filepath.Join(w.sysRoot, "proc/sys/vm/overcommit_memory"), []byte("1"), 0)
	go w.run()
}

// run samples until the watch is stopped, fast near pressure and slowly
// far from it, and at once when the containers are throttled.
//
// A slow cycle arms one timer, not two: every timer that fires wakes the
// idle guest (the Go runtime's netpoller and sysmon with it), and under
// TCG each wake-up costs the host. An idle pod used to wake twice a
// second here, for the rate limit and then for the slow sample.
func (w *pressureWatch) run() {
	events := newFileWatch(filepath.Join(w.sysRoot, containersCgroup, "memory.events"))
	defer events.close()
	t := time.NewTimer(pressureSampleEvery)
	defer t.Stop()
	var prev pressureSample
	for {
		at := time.Now()
		s := w.sampleOnce(at)
		w.mu.Lock()
		growBelow, idleEvery := w.growBelow, w.idleEvery
		w.mu.Unlock()
		slow := events.ok() && farFromPressure(s, prev, growBelow)
		prev = s
		var changed <-chan struct{} // nil (never ready) unless slow
		next := pressureSampleEvery
		if slow {
			changed, next = events.changed, idleEvery
		}
		// Reset discards an expiry not yet received (Go 1.23+ timers),
		// so no drain is needed.
		t.Reset(next)
		select {
		case <-t.C:
			continue
		case <-w.retime:
			continue // the host polls more often now: sample, re-arm
		case <-changed:
		case <-w.stopped:
			return
		}
		// Throttled: sample at once, but never more than once per
		// pressureSampleEvery: under steady throttling the kernel marks
		// memory.events modified up to every 10 ms, and sampling that
		// often would take the CPU the throttled workload needs.
		if wait := pressureSampleEvery - time.Since(at); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-w.stopped:
				return
			}
		}
	}
}

// farFromPressure reports whether s is far enough from any reason for
// pressure that the next sample may wait: MemAvailable farMargin above
// the grow threshold, no memory stall, and no throttling since prev.
func farFromPressure(s, prev pressureSample, growBelow uint64) bool {
	return s.memAvailable >= growBelow+farMargin && s.psiSomeAvg10 == 0 && s.highEvents == prev.highEvents
}

// sampleOnce reads the guest, applies the soft limit, wakes waiters and
// returns the sample.
func (w *pressureWatch) sampleOnce(now time.Time) pressureSample {
	s := w.read()
	w.mu.Lock()
	s.seq = w.last.seq + 1
	s.at = now
	throttle := w.throttle && now.Before(w.leaseEnd)
	lapsed := w.throttle && !throttle && !w.lapseLogged
	w.lapseLogged = w.lapseLogged || lapsed
	leaseEnd := w.leaseEnd
	reserve := w.reserve
	w.mu.Unlock()
	if lapsed {
		// Said on the console: a container the guest OOM-kills after
		// this was not braked, and a test failure must show why.
		logrus.WithField("lease_ended", leaseEnd.Format(time.RFC3339Nano)).
			Warn("elastic memory: the host stopped asking for pressure, lifting the containers' soft limit")
	}

	var high uint64
	if throttle {
		high = containersHighFor(s.containers, s.memAvailable, reserve)
	}
	w.setHigh(high)

	w.mu.Lock()
	s.high = w.highSet
	w.last = s
	w.cond.Broadcast()
	w.mu.Unlock()
	return s
}

// containersHighFor is the soft limit that leaves reserve of the guest
// free: what the containers use now plus what is available beyond the
// reserve. It is stable while the containers grow (their usage rises as
// MemAvailable falls) and rises when the host adds memory.
func containersHighFor(containers, available, reserve uint64) uint64 {
	var high uint64
	if available > reserve {
		high = containers + (available - reserve)
	} else if containers > reserve-available {
		high = containers - (reserve - available)
	}
	return max(high, minContainersHigh)
}

// setHigh writes memory.high of /berth (0 means "max"), if it changed.
func (w *pressureWatch) setHigh(high uint64) {
	w.mu.Lock()
	cur := w.highSet
	w.mu.Unlock()
	if high == cur || (high != 0 && cur != 0 && absDiff(high, cur) < highSlack) {
		return
	}
	v := "max"
	if high != 0 {
		v = strconv.FormatUint(high, 10)
	}
	// The cgroup appears with the first container; until then there is
	// nothing to throttle.
	if err := os.WriteFile(filepath.Join(w.sysRoot, containersCgroup, "memory.high"), []byte(v), 0); err != nil {
		return
	}
	w.mu.Lock()
	w.highSet = high
	w.mu.Unlock()
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

// read takes one sample from /proc and the containers' cgroup.
func (w *pressureWatch) read() pressureSample {
	var s pressureSample
	if f, err := os.Open(filepath.Join(w.sysRoot, "proc/meminfo")); err == nil {
		m := parseMeminfo(f)
		f.Close()
		s.memTotal, s.memAvailable = m["MemTotal"], m["MemAvailable"]
	}
	if f, err := os.Open(filepath.Join(w.sysRoot, "proc/pressure/memory")); err == nil {
		s.psiSomeAvg10, s.psiSomeTotal, s.psiFullTotal = parsePSI(f)
		f.Close()
	}
	cg := filepath.Join(w.sysRoot, containersCgroup)
	if b, err := os.ReadFile(filepath.Join(cg, "memory.current")); err == nil {
		s.containers, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	if b, err := os.ReadFile(filepath.Join(cg, "memory.events")); err == nil {
		s.highEvents = parseFlatKeyed(strings.NewReader(string(b)))["high"]
	}
	return s
}

// parsePSI reads /proc/pressure/memory:
//
//	some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=0
func parsePSI(r io.Reader) (someAvg10 float64, someTotal, fullTotal uint64) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var avg10 float64
		var total uint64
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "avg10":
				avg10, _ = strconv.ParseFloat(v, 64)
			case "total":
				total, _ = strconv.ParseUint(v, 10, 64)
			}
		}
		switch f[0] {
		case "some":
			someAvg10, someTotal = avg10, total
		case "full":
			fullTotal = total
		}
	}
	return someAvg10, someTotal, fullTotal
}

// pressureReason says why a sample is pressure under req, or "".
func pressureReason(s pressureSample, reportedHigh uint64, req *api.WaitMemoryPressureRequest) string {
	switch {
	case req.GrowBelowBytes > 0 && s.memAvailable < req.GrowBelowBytes:
		return "MemAvailable below the grow threshold"
	case s.highEvents > reportedHigh:
		return "containers throttled at their soft limit"
	case req.PsiSomeAvg10Above > 0 && s.psiSomeAvg10 >= req.PsiSomeAvg10Above:
		return "memory stall (PSI some avg10)"
	}
	return ""
}

// wait answers one WaitMemoryPressure call.
func (w *pressureWatch) wait(ctx context.Context, req *api.WaitMemoryPressureRequest) *api.MemoryPressure {
	timeout := min(max(time.Duration(req.TimeoutMs)*time.Millisecond, minPressureTimeout), maxPressureTimeout)
	deadline := time.Now().Add(timeout)
	w.mu.Lock()
	w.throttle, w.reserve, w.growBelow = req.Throttle, req.ReserveBytes, req.GrowBelowBytes
	w.leaseEnd = deadline.Add(throttleLease)
	w.lapseLogged = false
	idleEvery := min(max(timeout, pressureSampleIdle), pressureSampleIdleMax)
	shorter := idleEvery < w.idleEvery
	w.idleEvery = idleEvery
	w.mu.Unlock()
	if shorter {
		select {
		case w.retime <- struct{}{}:
		default: // already pending
		}
	}
	w.start()

	// Wake the condition variable when the call's context ends or its
	// time is up.
	wake := time.AfterFunc(timeout, func() { w.mu.Lock(); w.cond.Broadcast(); w.mu.Unlock() })
	defer wake.Stop()
	stop := context.AfterFunc(ctx, func() { w.mu.Lock(); w.cond.Broadcast(); w.mu.Unlock() })
	defer stop()

	w.mu.Lock()
	defer w.mu.Unlock()
	minAvail := uint64(0)
	seen := uint64(0)
	for {
		s := w.last
		if s.seq > seen && s.seq > 0 {
			seen = s.seq
			if minAvail == 0 || s.memAvailable < minAvail {
				minAvail = s.memAvailable
			}
			if s.seq > req.AfterSeq {
				if why := pressureReason(s, w.reportedHigh, req); why != "" {
					w.reportedHigh = s.highEvents
					return s.response(minAvail, why)
				}
			}
		}
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			w.reportedHigh = s.highEvents
			return s.response(minAvail, "")
		}
		w.cond.Wait()
	}
}

func (s pressureSample) response(minAvail uint64, reason string) *api.MemoryPressure {
	if minAvail == 0 {
		minAvail = s.memAvailable
	}
	return &api.MemoryPressure{
		Seq: s.seq, MemTotalBytes: s.memTotal, MemAvailableBytes: s.memAvailable, MinAvailableBytes: minAvail,
		PsiSomeAvg10: s.psiSomeAvg10, PsiSomeTotalUs: s.psiSomeTotal, PsiFullTotalUs: s.psiFullTotal,
		ContainersBytes: s.containers, ContainersHighBytes: s.high, HighEvents: s.highEvents,
		Pressure: reason != "", Reason: reason,
	}
}

// WaitMemoryPressure implements the long poll (see pressureWatch).
func (s *Service) WaitMemoryPressure(ctx context.Context, req *api.WaitMemoryPressureRequest) (*api.MemoryPressure, error) {
	return s.pressure.wait(ctx, req), nil
}
