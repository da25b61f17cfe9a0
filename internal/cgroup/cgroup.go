// Package cgroup owns the host cgroup that holds one sandbox's VMM: QEMU
// with all of its threads, and virtiofsd. It is sized to the sandbox (the
// VM's memory plus an overhead for the VMM itself), follows memory resizes
// and CPU updates, and is removed when the sandbox ends.
//
// How a cgroup is made depends on the host: cgroup v1 (one hierarchy per
// controller), v2 (the unified hierarchy), hybrid (v1 controllers plus an
// empty v2 mount, where limits can only go into v1) and, orthogonally,
// whether cgroups are written directly (cgroupfs) or asked of systemd.
// NewManager picks one implementation of Manager once, from the detected
// host layout and the configuration; nothing later asks the question again.
//
// There is no nil controller anywhere (seed 001: a nil resource controller
// that only appeared under one configuration crashed the shim). NewManager
// either returns a working Manager or an error; the no-op Manager exists
// only for an explicit `manager = "none"` in the configuration.
//
// The package knows nothing of VMs or containers: it is given pids, a path
// and limits.
package cgroup

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
)

// Limits are what a sandbox cgroup enforces. Zero means "no limit" for
// every field.
type Limits struct {
	// MemoryBytes caps memory used by every process in the cgroup (the
	// guest's RAM is QEMU's memory, so this bounds the VM as a whole).
	MemoryBytes int64
	// CPUQuotaUsec of CPU time per CPUPeriodUsec; with both set the
	// cgroup may use CPUQuotaUsec/CPUPeriodUsec CPUs.
	CPUQuotaUsec  int64
	CPUPeriodUsec uint64
	// CPUShares is the v1 relative weight (2-262144); v2 converts it to
	// cpu.weight the way runc does.
	CPUShares uint64
	// CPUs are the host CPUs the cgroup's processes may run on, a cpuset
	// list ("2-3,6"); "" is every CPU of the parent. It is written on its
	// own, after the other limits, so that a CPU list the host cannot
	// take does not keep the memory and CPU limits from applying.
	CPUs string
}

// Cgroup is one sandbox's host cgroup.
type Cgroup interface {
	// Path names the cgroup for this Manager: a path below each
	// hierarchy's root for cgroupfs ("/berth/<id>"), or
	// "<slice>:<unit>" for systemd. Recorded in the sandbox directory, it
	// is what Manager.Remove takes after a crash.
	Path() string
	// Add moves a process, with all of its threads, into the cgroup.
	Add(ctx context.Context, pid int) error
	// Update replaces the limits.
	Update(ctx context.Context, l Limits) error
	// Pids lists the processes in the cgroup.
	Pids(ctx context.Context) ([]int, error)
	// Delete removes the cgroup; its processes must have exited. A
	// cgroup that is already gone is not an error.
	Delete(ctx context.Context) error
}

// Manager makes sandbox cgroups the one way this host wants it.
type Manager interface {
	// Name says which implementation this is, for logs and berth env
	// ("cgroupfs v1", "cgroupfs v2", "systemd v2", "none").
	Name() string
	// New creates the cgroup at path (see Cgroup.Path) with limits l.
	New(ctx context.Context, path string, l Limits) (Cgroup, error)
	// Remove deletes the cgroup at path, as recorded by a process that is
	// gone, after killing (SIGKILL) any process still in it: only the dead
	// sandbox's VMM and helpers were ever put there. A missing cgroup is
	// not an error.
	Remove(ctx context.Context, path string) error
}

// Driver values, as the configuration spells them.
const (
	DriverCgroupfs = "cgroupfs"
	DriverSystemd  = "systemd"
	DriverNone     = "none"
)

// Options choose and configure the implementation.
type Options struct {
	// Driver is DriverCgroupfs, DriverSystemd or DriverNone.
	Driver string
	// Host is the detected layout (see Detect).
	Host Host
}

// ErrUnsupported classifies a driver/layout combination that cannot work.
var ErrUnsupported = errors.New("unsupported cgroup setup")

// NewManager picks the implementation for the host, once.
func NewManager(opts Options) (Manager, error) {
	switch opts.Driver {
	case DriverNone:
		return noop{}, nil
	case DriverCgroupfs:
		switch opts.Host.Layout {
		case LayoutV2:
			return newV2(opts.Host.V2Mount)
		case LayoutV1, LayoutHybrid:
			// Hybrid: the unified mount has no controllers, so the
			// limits can only be enforced in the v1 hierarchies.
			return newV1(opts.Host)
		}
		return nil, fmt.Errorf("the host has no cgroup file system mounted (%s): %w", opts.Host.Layout, ErrUnsupported)
	case DriverSystemd:
		if !opts.Host.Systemd {
			return nil, fmt.Errorf("the systemd cgroup driver needs systemd as PID 1: %w", ErrUnsupported)
		}
		if opts.Host.Layout != LayoutV2 {
			return nil, fmt.Errorf("the systemd cgroup driver supports cgroup v2 hosts only, this one is %s: %w", opts.Host.Layout, ErrUnsupported)
		}
		return newSystemd(opts.Host.V2Mount), nil
	}
	return nil, fmt.Errorf("cgroup driver %q: %w", opts.Driver, ErrUnsupported)
}

// ValidPath reports whether p is an acceptable cgroupfs path: absolute,
// clean, not the root, no "..".
func ValidPath(p string) bool {
	return strings.HasPrefix(p, "/") && p != "/" && path.Clean(p) == p && !strings.Contains(p, "..")
}

// noop is the explicit `manager = "none"`: the VMM stays in its parent's
// cgroup and nothing is limited.
type noop struct{}

func (noop) Name() string { return DriverNone }
func (noop) New(_ context.Context, p string, _ Limits) (Cgroup, error) {
	return noopCgroup(p), nil
}
func (noop) Remove(context.Context, string) error { return nil }

type noopCgroup string

func (c noopCgroup) Path() string                       { return string(c) }
func (noopCgroup) Add(context.Context, int) error       { return nil }
func (noopCgroup) Update(context.Context, Limits) error { return nil }
func (noopCgroup) Pids(context.Context) ([]int, error)  { return nil, nil }
func (noopCgroup) Delete(context.Context) error         { return nil }
