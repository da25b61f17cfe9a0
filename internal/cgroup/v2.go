package cgroup

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/containerd/cgroups/v3/cgroup2"
)

// v2 writes the unified hierarchy through containerd's cgroup2 package.
type v2 struct{ mount string }

func newV2(mount string) (Manager, error) {
	if mount == "" {
		return nil, fmt.Errorf("cgroup2 is not mounted: %w", ErrUnsupported)
	}
	return &v2{mount: mount}, nil
}

func (m *v2) Name() string { return "cgroupfs v2" }

func (m *v2) New(_ context.Context, path string, l Limits) (Cgroup, error) {
	if !ValidPath(path) {
		return nil, fmt.Errorf("cgroup path %q is not an absolute, clean path below the root: %w", path, ErrUnsupported)
	}
	mgr, err := cgroup2.NewManager(m.mount, path, v2Resources(l, false))
	if err != nil {
		return nil, fmt.Errorf("create v2 cgroup %s: %w", path, err)
	}
	c := &v2Cgroup{path: path, dir: filepath.Join(m.mount, path), mgr: mgr}
	if l.CPUs != "" {
		if err := c.setCPUs(l.CPUs); err != nil {
			mgr.Delete()
			return nil, err
		}
	}
	return c, nil
}

func (m *v2) Remove(ctx context.Context, path string) error {
	if !ValidPath(path) {
		return fmt.Errorf("cgroup path %q: %w", path, ErrUnsupported)
	}
	dir := filepath.Join(m.mount, path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	mgr, err := cgroup2.Load(path, cgroup2.WithMountpoint(m.mount))
	if err != nil {
		return fmt.Errorf("load v2 cgroup %s: %w", path, err)
	}
	c := &v2Cgroup{path: path, dir: dir, mgr: mgr}
	pids, _ := c.Pids(ctx)
	killAll(pids)
	return c.Delete(ctx)
}

type v2Cgroup struct {
	path, dir string
	mgr       *cgroup2.Manager
}

func (c *v2Cgroup) Path() string { return c.path }

func (c *v2Cgroup) Add(_ context.Context, pid int) error {
	if err := c.mgr.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("move pid %d into %s: %w", pid, c.path, err)
	}
	return nil
}

func (c *v2Cgroup) Update(_ context.Context, l Limits) error {
	if err := c.mgr.Update(v2Resources(l, true)); err != nil {
		return fmt.Errorf("update v2 cgroup %s: %w", c.path, err)
	}
	return c.setCPUs(l.CPUs)
}

// setCPUs writes cpuset.cpus, enabling the cpuset controller down to the
// cgroup first when it has none; an empty cpuset.cpus is the parent's.
func (c *v2Cgroup) setCPUs(cpus string) error {
	file := filepath.Join(c.dir, "cpuset.cpus")
	if !exists(file) {
		if cpus == "" {
			return nil
		}
		if err := c.mgr.ToggleControllers([]string{"cpuset"}, cgroup2.Enable); err != nil {
			return fmt.Errorf("cpuset %q for %s: enable the cpuset controller: %w", cpus, c.path, err)
		}
	}
	if err := os.WriteFile(file, []byte(cpus+"\n"), 0); err != nil {
		return fmt.Errorf("cpuset %q for %s: %w", cpus, c.path, err)
	}
	return nil
}

func (c *v2Cgroup) Pids(context.Context) ([]int, error) {
	return readProcs(filepath.Join(c.dir, "cgroup.procs"))
}

func (c *v2Cgroup) Delete(ctx context.Context) error {
	return retryDelete(ctx, c.path, func() error {
		if _, err := os.Stat(c.dir); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return c.mgr.Delete()
	})
}

// v2Resources converts Limits; see specResources for update.
func v2Resources(l Limits, update bool) *cgroup2.Resources {
	r := &cgroup2.Resources{}
	// memory.max takes "max" or a number (not -1); a number beyond the
	// counter's range is clamped to "max".
	max := int64(math.MaxInt64)
	switch {
	case l.MemoryBytes > 0:
		r.Memory = &cgroup2.Memory{Max: &l.MemoryBytes}
	case update:
		r.Memory = &cgroup2.Memory{Max: &max}
	}
	cpu := &cgroup2.CPU{}
	set := false
	if l.CPUQuotaUsec > 0 && l.CPUPeriodUsec > 0 {
		cpu.Max = cgroup2.NewCPUMax(&l.CPUQuotaUsec, &l.CPUPeriodUsec)
		set = true
	} else if update {
		period := uint64(100000)
		cpu.Max = cgroup2.NewCPUMax(nil, &period)
		set = true
	}
	if l.CPUShares > 0 {
		w := sharesToWeight(l.CPUShares)
		cpu.Weight = &w
		set = true
	}
	if set {
		r.CPU = cpu
	}
	return r
}

// sharesToWeight maps v1 shares [2, 262144] onto v2 weight [1, 10000]
// with runc's formula, so a pod weighs the same on either version.
func sharesToWeight(shares uint64) uint64 {
	if shares == 0 {
		return 0
	}
	return 1 + ((shares-2)*9999)/262142
}
