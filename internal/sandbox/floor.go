package sandbox

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// SetMemoryFloor tells the sandbox how much memory its owner's containers
// need (their limits, the boot memory and the overhead): `berth resize`
// below it is refused, since the guest would OOM-kill a container under
// its own limit. floor returns 0 when nothing needs protecting.
func (s *Sandbox) SetMemoryFloor(floor func() int) { s.memFloor.Store(&floor) }

// checkMemoryFloor refuses a resize below the floor.
func (s *Sandbox) checkMemoryFloor(targetMiB int) error {
	f := s.memFloor.Load()
	if f == nil {
		return nil
	}
	if floor := (*f)(); targetMiB < floor {
		return fmt.Errorf("%d MiB is below the %d MiB this sandbox's containers need (boot memory, hypervisor.memory_overhead and their memory limits): lower or remove a container's limit first: %w",
			targetMiB, floor, errdefs.ErrInvalidArgument)
	}
	return nil
}
