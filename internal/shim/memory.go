package shim

import (
	"context"
	"fmt"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

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
func (s *service) memoryTarget(sb *sandbox.Sandbox, overrideID string, overrideLimit int64) int {
	target, _ := s.memoryBounds(sb, overrideID, overrideLimit)
	return target
}

// memoryBounds returns the static target (memoryTarget) and the ceiling
// elastic memory may grow the VM to: the target when every container has
// a limit (the pod can never use more), else the sandbox's maximum. The
// CRI sandbox (pause) container counts as limited: it only holds the
// pod's namespaces.
func (s *service) memoryBounds(sb *sandbox.Sandbox, overrideID string, overrideLimit int64) (target, ceiling int) {
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
	st := sb.MemoryStatus(s.ctx)
	l := memory.Limits{Mechanism: st.Mechanism, BootMiB: st.GuestAtBootMiB, MaxMiB: st.MaxGuestMiB}
	target = memory.Target(l, s.cfg.Hypervisor.MemoryOverheadMiB, limits)
	ceiling = target
	if unlimited {
		ceiling = st.MaxGuestMiB
	}
	return target, ceiling
}

// updateElastic gives the sandbox's elastic controller its bounds.
func (s *service) updateElastic(sb *sandbox.Sandbox, overrideID string, overrideLimit int64) (target, ceiling int) {
	target, ceiling = s.memoryBounds(sb, overrideID, overrideLimit)
	sb.SetElasticBounds(target, ceiling)
	return target, ceiling
}

// growFor makes room for a container's new limit before it takes effect.
func (s *service) growFor(ctx context.Context, sb *sandbox.Sandbox, id string, limit int64) error {
	target, _ := s.updateElastic(sb, id, limit)
	if st := sb.MemoryStatus(ctx); st.Mechanism == memory.None || target <= st.GuestCurrentMiB {
		return nil
	}
	if _, err := sb.ResizeMemory(ctx, target); err != nil {
		return fmt.Errorf("grow the pod's VM to %d MiB for container %s: %w", target, id, err)
	}
	return nil
}

// shrinkToFit returns memory no container needs any more. Failure is
// logged, not returned: the containers run either way. While a container
// without a limit runs, elastic memory owns the VM's size above the
// target: it gives memory back once it is idle, not while it may be in
// use.
func (s *service) shrinkToFit(ctx context.Context, sb *sandbox.Sandbox) {
	target, ceiling := s.updateElastic(sb, "", 0)
	if sb.ElasticEnabled() && ceiling > target {
		return
	}
	st := sb.MemoryStatus(ctx)
	if st.Mechanism == memory.None || target >= st.GuestCurrentMiB {
		return
	}
	if _, err := sb.ResizeMemory(ctx, target); err != nil {
		log.G(ctx).WithError(err).WithField("target_mib", target).Warn("shrink pod VM")
	}
}
