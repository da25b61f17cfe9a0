package shim

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/memory"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// The pod's VM is sized to what its containers may use: its boot memory,
// plus the configured overhead, plus every container's memory limit
// (memory.Target). It grows before a container that needs the memory is
// created or has its limit raised, and shrinks after a container is
// deleted or has its limit lowered. A grow that fails fails the request: a
// container started without the memory its limit promises would be
// OOM-killed later, which is harder to understand than an error now.

func memoryLimit(res *specs.LinuxResources) int64 {
	if res == nil || res.Memory == nil || res.Memory.Limit == nil {
		return 0
	}
	return *res.Memory.Limit
}

// memoryTarget sums the limits of the pod's containers, with override
// replacing (or adding) one container's limit.
// The overhead is cfg's: the configuration of the request at hand.
func (s *service) memoryTarget(cfg *config.Config, sb podVM, overrideID string, overrideLimit int64) int {
	target, _ := s.memoryBounds(cfg, sb, overrideID, overrideLimit)
	return target
}

// memoryBounds returns the static target (memoryTarget) and the ceiling
// elastic memory may grow the VM to: the target when every container has
// a limit (the pod can never use more), else the sandbox's maximum. The
// CRI sandbox (pause) container counts as limited: it only holds the
// pod's namespaces.
func (s *service) memoryBounds(cfg *config.Config, sb podVM, overrideID string, overrideLimit int64) (target, ceiling int) {
	s.mu.Lock()
	var limits []int64
	unlimited := false
	for id, c := range s.containers {
		limit := c.memLimit()
		if id == overrideID {
			limit = overrideLimit
		}
		if id != overrideID {
			limits = append(limits, limit)
		}
		if limit <= 0 && !c.podSandbox {
			unlimited = true
		}
	}
	s.mu.Unlock()
	if overrideID != "" {
		limits = append(limits, overrideLimit)
	}
	st := sb.HostMemoryStatus()
	target = memory.Target(st.Limits(), cfg.Hypervisor.MemoryOverheadMiB, limits)
	ceiling = target
	if unlimited {
		ceiling = st.MaxGuestMiB
	}
	return target, ceiling
}

// podConfig is the configuration the pod's VM was booted with.
func (s *service) podConfig() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.podCfg == nil {
		// No VM yet, or it is gone: nothing is sized with it then, but
		// never hand out nil.
		return config.Default()
	}
	return s.podCfg
}

// updateElastic gives the sandbox's elastic controller its bounds.
func (s *service) updateElastic(cfg *config.Config, sb podVM, overrideID string, overrideLimit int64) (target, ceiling int) {
	target, ceiling = s.memoryBounds(cfg, sb, overrideID, overrideLimit)
	sb.SetElasticBounds(target, ceiling)
	return target, ceiling
}

// growFor makes room for container c's new limit before it takes effect,
// and records the limit if it is higher than c's: from then on every
// shrink leaves room for it. A lower limit is recorded by the caller once
// the guest has applied it.
//
// A limit the VM could not give the container even alone is refused: it
// used to be clamped silently, and the container then OOM-killed below
// its limit.
func (s *service) growFor(ctx context.Context, cfg *config.Config, sb podVM, c *container, limit int64) error {
	preempted := s.preemptShrink()
	s.sizeMu.Lock()
	defer s.sizeMu.Unlock()
	if preempted {
		// The stopped shrink runs again after this grow, to a target
		// that includes the limit recorded below.
		defer func() { go s.shrinkToFit(context.WithoutCancel(ctx), cfg, sb) }()
	}
	st := sb.HostMemoryStatus()
	if err := limitFits(st, cfg.Hypervisor.MemoryOverheadMiB, c.id, limit); st.Mechanism != memory.None && err != nil {
		return err
	}
	target, _ := s.updateElastic(cfg, sb, c.id, limit)
	if st.Mechanism != memory.None && target > st.GuestCurrentMiB {
		if _, err := sb.ResizeMemory(ctx, target); err != nil {
			return fmt.Errorf("grow the pod's VM to %d MiB for container %s: %w", target, c.id, err)
		}
	}
	if limit > c.memLimit() {
		c.setMemLimit(limit)
	}
	return nil
}

// limitFits says whether a container's memory limit fits in the VM at
// all: boot memory, overhead and the limit within hypervisor.default_maxmemory.
func limitFits(st sandbox.MemoryStatus, overheadMiB int, id string, limit int64) error {
	if limit <= 0 {
		return nil
	}
	limitMiB := int((limit + (1 << 20) - 1) >> 20)
	need := st.GuestAtBootMiB + overheadMiB + limitMiB
	if need <= st.MaxGuestMiB {
		return nil
	}
	return fmt.Errorf("container %s: its memory limit of %d MiB needs a VM of %d MiB (boot memory %d + hypervisor.memory_overhead %d + the limit), above the VM's maximum of %d MiB (hypervisor.default_maxmemory): lower the limit, or raise default_maxmemory: %w",
		id, limitMiB, need, st.GuestAtBootMiB, overheadMiB, st.MaxGuestMiB, errdefs.ErrInvalidArgument)
}

// memoryFloor is the least memory the pod's containers need, for
// `berth resize` to respect; 0 when no container has a limit.
func (s *service) memoryFloor(sb podVM) int {
	s.mu.Lock()
	any := false
	for _, c := range s.containers {
		any = any || c.memLimit() > 0
	}
	s.mu.Unlock()
	if !any {
		return 0
	}
	return s.memoryTarget(s.podConfig(), sb, "", 0)
}

// errShrinkPreempted is the cause a grow gives the shrink it stops.
var errShrinkPreempted = errors.New("a grow preempted the shrink")

// preemptShrink stops the shrinks in progress or waiting for sizeMu, if
// any, and says whether there were any. A running shrink settles where
// the guest got to; the grow starts one again once it is done.
func (s *service) preemptShrink() bool {
	s.shrinkMu.Lock()
	defer s.shrinkMu.Unlock()
	for _, cancel := range s.shrinks {
		cancel(errShrinkPreempted)
	}
	return len(s.shrinks) > 0
}

// registerShrink makes a shrink's context, which a grow cancels, and
// returns it with the function that ends the registration.
func (s *service) registerShrink(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	s.shrinkMu.Lock()
	if s.shrinks == nil {
		s.shrinks = make(map[uint64]context.CancelCauseFunc)
	}
	id := s.nextShrink
	s.nextShrink++
	s.shrinks[id] = cancel
	s.shrinkMu.Unlock()
	return ctx, func() {
		s.shrinkMu.Lock()
		delete(s.shrinks, id)
		s.shrinkMu.Unlock()
		cancel(nil)
	}
}

// shrinkToFit returns memory no container needs any more. Failure is
// logged, not returned: the containers run either way. While a container
// without a limit runs, elastic memory owns the VM's size above the
// target: it gives memory back once it is idle, not while it may be in
// use. A grow that arrives meanwhile preempts it (growFor), even while it
// still waits for sizeMu.
func (s *service) shrinkToFit(ctx context.Context, cfg *config.Config, sb podVM) {
	ctx, done := s.registerShrink(ctx)
	defer done()
	s.sizeMu.Lock()
	defer s.sizeMu.Unlock()
	if isDone(sb.Done()) {
		return // the pod ended while this waited for sizeMu
	}
	preemptedNow := func() bool { return errors.Is(context.Cause(ctx), errShrinkPreempted) }
	if preemptedNow() {
		return // a grow came first; it starts a shrink again after itself
	}

	target, ceiling := s.updateElastic(cfg, sb, "", 0)
	if sb.ElasticEnabled() && ceiling > target {
		return
	}
	st := sb.HostMemoryStatus()
	if st.Mechanism == memory.None || target >= st.GuestCurrentMiB {
		return
	}
	// Never below what the guest uses: a container without a limit may
	// use memory that a deleted container's limit had grown the VM for
	// (elastic memory off), and the guest would OOM-kill it.
	avail, err := sb.GuestAvailableMiB(ctx)
	if err != nil {
		if !preemptedNow() && !isDone(sb.Done()) {
			log.G(ctx).WithError(err).Warn("shrink pod VM: not without the guest's memory use")
		}
		return
	}
	if floor := memory.ShrinkFloorMiB(st.Limits(), st.GuestCurrentMiB, avail); target < floor {
		log.G(ctx).WithField("target_mib", target).WithField("floor_mib", floor).WithField("guest_available_mib", avail).
			Info("shrink pod VM: not below what the guest uses")
		target = floor
	}
	if target >= st.GuestCurrentMiB {
		return
	}
	if _, err := sb.ResizeMemory(ctx, target); err != nil {
		if preemptedNow() {
			log.G(ctx).WithError(err).WithField("target_mib", target).Info("shrink pod VM: preempted by a grow, which starts it again")
			return
		}
		if !isDone(sb.Done()) {
			log.G(ctx).WithError(err).WithField("target_mib", target).Warn("shrink pod VM")
		}
	}
}
