package shim

import (
	"context"
	"time"
)

// oomSource is the long poll for a container's OOM-kill count
// (*sandbox.Sandbox; the agent's WaitOOM).
type oomSource interface {
	WaitOOM(ctx context.Context, id string, after uint64) (uint64, error)
}

// oomPace bounds what the guest's answers to WaitOOM can make the shim do.
// The guest is hostile: a real agent blocks until the kill count grows, but
// a compromised one may answer at once, over and over, with or without a
// new count. Without pacing the watcher would spin a core of the host and
// flood containerd with TaskOOM events.
type oomPace struct {
	// minEventInterval is the least time between two TaskOOM events of
	// one container. Kills within it are reported by the next event:
	// TaskOOM carries no count, and the watcher asks for kills after the
	// last reported count, so nothing is lost but the repetition.
	minEventInterval time.Duration
	// backoff and maxBackoff pace re-asking after an answer with no new
	// kill (which a well-behaved agent never sends), doubling each time.
	backoff, maxBackoff time.Duration
}

// defaultOOMPace: at most one TaskOOM per second per container (a kubelet
// only counts OOM events), and an agent that answers without news is
// asked again at most every 10 s once it has done so a few times.
var defaultOOMPace = oomPace{minEventInterval: time.Second, backoff: 100 * time.Millisecond, maxBackoff: 10 * time.Second}

// watchOOM asks src for OOM kills of container id after the count already
// reported (reported), and calls publish with each greater count, paced by
// p, until ctx ends or src fails (the container or the VM is gone).
// publish deduplicates against the reported count itself (the exit path
// reports too).
func watchOOM(ctx context.Context, src oomSource, id string, p oomPace, reported func() uint64, publish func(n uint64)) {
	backoff := p.backoff
	var lastEvent time.Time
	for {
		after := reported()
		n, err := src.WaitOOM(ctx, id, after)
		if err != nil {
			return
		}
		if n <= after {
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, p.maxBackoff)
			continue
		}
		backoff = p.backoff
		if wait := p.minEventInterval - time.Since(lastEvent); wait > 0 {
			// Ask again after the wait: the count then covers every
			// kill until then, in one event.
			if !sleepCtx(ctx, wait) {
				return
			}
			continue
		}
		publish(n)
		lastEvent = time.Now()
	}
}

// sleepCtx sleeps for d and reports false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
