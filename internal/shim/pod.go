package shim

import (
	"context"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// podVM is what the shim needs from its pod's sandbox. *sandbox.Sandbox
// provides it (through sandboxPod); unit tests use a fake, so that every
// task API verb can be tested without QEMU. The groups are the seams the
// shim actually crosses: the VM's life, the containers in it, its memory.
type podVM interface {
	vmLife
	guestContainers
	podMemory
}

// vmLife is the VM as a whole.
type vmLife interface {
	VMMPid() int
	Done() <-chan struct{}
	VMError() error
	Destroy(ctx context.Context) error
}

// guestContainers runs containers and processes in the guest.
type guestContainers interface {
	CreateContainer(ctx context.Context, cc sandbox.ContainerConfig) (guestProcess, error)
	Exec(ctx context.Context, containerID, execID string, p *specs.Process, stdio sandbox.IO) (guestProcess, error)
	DeleteContainer(ctx context.Context, id string) error
	// ReleaseContainer is DeleteContainer without the guest's part, for
	// the last container of a VM about to be destroyed.
	ReleaseContainer(ctx context.Context, id string) error
	DeleteExec(ctx context.Context, containerID, execID string) error
	PauseContainer(ctx context.Context, id string) error
	ResumeContainer(ctx context.Context, id string) error
	UpdateContainer(ctx context.Context, id string, res *specs.LinuxResources) error
	ContainerStats(ctx context.Context, id string) (*api.StatsResponse, error)
	ReleaseDevices(ctx context.Context, id string) error
	oomSource
}

// podMemory sizes the VM for its containers (memory.go).
type podMemory interface {
	// HostMemoryStatus: sizing needs only the host's bookkeeping, not
	// the guest's view (an agent round trip).
	HostMemoryStatus() sandbox.MemoryStatus
	// GuestAvailableMiB is the guest's MemAvailable (an agent round
	// trip), which bounds a shrink.
	GuestAvailableMiB(ctx context.Context) (int, error)
	ResizeMemory(ctx context.Context, targetMiB int) (sandbox.MemoryStatus, error)
	SetElasticBounds(floorMiB, ceilingMiB int)
	ElasticEnabled() bool
	SetMemoryFloor(floor func() int)
}

// guestProcess is a container's init or an exec in the guest
// (*sandbox.Process).
type guestProcess interface {
	Pid() uint32
	Start(ctx context.Context) error
	Wait(ctx context.Context) (sandbox.ExitStatus, error)
	Kill(ctx context.Context, sig syscall.Signal, all bool) error
	Resize(ctx context.Context, width, height uint32) error
}

// bootFunc boots a pod's VM; service.boot is bootSandbox outside tests.
type bootFunc func(ctx context.Context, cfg *config.Config, opts sandbox.Options) (podVM, error)

// sandboxPod is a *sandbox.Sandbox as a podVM: its processes as
// guestProcess (a nil *sandbox.Process must not become a non-nil
// interface).
type sandboxPod struct{ *sandbox.Sandbox }

func (p sandboxPod) CreateContainer(ctx context.Context, cc sandbox.ContainerConfig) (guestProcess, error) {
	sp, err := p.Sandbox.CreateContainer(ctx, cc)
	if err != nil {
		return nil, err
	}
	return sp, nil
}

func (p sandboxPod) Exec(ctx context.Context, containerID, execID string, proc *specs.Process, stdio sandbox.IO) (guestProcess, error) {
	sp, err := p.Sandbox.Exec(ctx, containerID, execID, proc, stdio)
	if err != nil {
		return nil, err
	}
	return sp, nil
}
