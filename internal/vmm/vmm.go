// Package vmm is the seam between a sandbox and the hypervisor that runs
// its VM: a neutral description of the VM (Spec, with one Go type per
// device), a small Driver that starts one, the VM handle it returns, and
// capability interfaces for what not every hypervisor can do.
//
// A caller discovers a capability with a type assertion on the VM (or the
// Driver) and, when it is missing, reports a NotImplemented error naming
// the driver (Unsupported): a driver never pretends to have done what it
// cannot. The QEMU driver lives in internal/qemu, which translates a Spec
// into its own command line; nothing here knows QEMU's syntax.
package vmm

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// Driver starts VMs of one hypervisor. It is chosen once per process from
// hypervisor.driver and handed to every sandbox.
type Driver interface {
	// Name is the driver's hypervisor.driver value, used in errors.
	Name() string
	// Start validates spec and starts the VM. ctx bounds only the start:
	// the VM outlives it. On error nothing of the VM is left.
	Start(ctx context.Context, spec Spec, opts StartOptions) (VM, error)
}

// StartOptions tune how the hypervisor process runs, not what it emulates.
type StartOptions struct {
	// DieWithParent kills the hypervisor when the starting process exits,
	// so a crashed shim leaves no orphan VM.
	DieWithParent bool
	// Credential, if set, runs the hypervisor as that user and groups.
	Credential *syscall.Credential
	// Started, if set, is called with the hypervisor's pid right after
	// the process exists and before the guest runs (to move it into a
	// cgroup before guest memory is touched); an error fails Start.
	Started func(pid int) error
	// Batch runs the hypervisor process as CPU-bound batch work (Linux's
	// SCHED_BATCH with a long slice), for emulated vCPUs
	// (hypervisor.scheduling).
	Batch bool
}

// VM is a running hypervisor process: what every driver must offer.
type VM interface {
	Pid() int
	// Done is closed once the hypervisor process has exited and was
	// reaped.
	Done() <-chan struct{}
	// ExitError says why the process exited (nil for a clean power-off);
	// call it after Done.
	ExitError() error
	// Shutdown stops the VM gracefully within ctx, then by force.
	Shutdown(ctx context.Context) error
	// Kill stops the VM at once.
	Kill() error
}

// DeviceHotplugger is a VM whose disks and PCI functions can be plugged
// in and out after boot.
type DeviceHotplugger interface {
	HotplugBlock(ctx context.Context, d BlockDevice) error
	UnplugBlock(ctx context.Context, d BlockDevice) error
	HotplugVFIO(ctx context.Context, d VFIODevice) error
	// UnplugDevice removes a hot-plugged device by ID and waits until
	// the guest has let go of it.
	UnplugDevice(ctx context.Context, id string) error
}

// MemoryHotplugger is a VM whose memory can grow and shrink after boot,
// through the Spec's virtio-mem region or DIMM slots.
type MemoryHotplugger interface {
	// ResizeVirtioMem asks for sizeMiB plugged in the virtio-mem device
	// id and waits up to settle for the guest, or until ctx is done; it
	// returns what the guest reached.
	ResizeVirtioMem(ctx context.Context, id string, sizeMiB int, settle time.Duration) (int, error)
	PlugDIMM(ctx context.Context, d DIMM) error
	// UnplugDIMM ejects a DIMM and waits until the guest has given it up.
	UnplugDIMM(ctx context.Context, id string) error
	// MemoryDeviceRange is where a memory device sits in guest physical
	// memory.
	MemoryDeviceRange(ctx context.Context, id string) (addr, size uint64, err error)
}

// AccelDetector is a Driver that can find out whether hardware
// acceleration works on this host (hypervisor.accel = "auto").
type AccelDetector interface {
	// DetectAccel returns the accelerator to use and why; results may be
	// cached in cacheFile.
	DetectAccel(ctx context.Context, p AccelProbe, cacheFile string) (Accel, string, error)
}

// AccelProbe is what a detection may boot.
type AccelProbe struct {
	Binary  string // the hypervisor executable
	Kernel  string // a guest kernel, for a real boot test
	Timeout time.Duration
}

// Unsupported is the error for a capability a driver lacks: NotImplemented,
// naming the driver and what was asked, so the user can pick another
// driver or turn the feature off.
func Unsupported(driver, what string) error {
	return fmt.Errorf("hypervisor.driver %q cannot %s: %w", driver, what, errdefs.ErrNotImplemented)
}
