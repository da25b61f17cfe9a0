package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3/cgroup1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// v1 writes cgroupfs v1 (also on hybrid hosts, whose v2 mount has no
// controllers) through containerd's cgroup1 package, with a hierarchy
// limited to the controllers a VMM needs: memory (required), cpu,
// cpuacct, pids and cpuset when mounted. A new v1 cpuset cgroup starts
// with no CPUs; cgroup1 fills it from its parent's when it makes it, and
// Limits.CPUs is written by setCPUs.
type v1 struct {
	root       string
	subsystems func() ([]cgroup1.Subsystem, error)
}

func newV1(h Host) (Manager, error) {
	root := h.V1Root()
	if root == "" {
		return nil, fmt.Errorf("the memory controller has no v1 hierarchy (%s): %w", h, ErrUnsupported)
	}
	if got := filepath.Join(root, "memory"); h.V1Mounts["memory"] != got {
		return nil, fmt.Errorf("the v1 memory hierarchy is mounted at %s, not %s: %w", h.V1Mounts["memory"], got, ErrUnsupported)
	}
	m := &v1{root: root}
	m.subsystems = func() ([]cgroup1.Subsystem, error) {
		s := []cgroup1.Subsystem{cgroup1.NewMemory(root)}
		// cpu and cpuacct are often one hierarchy ("cpu,cpuacct") with
		// symlinks named after each; a controller reached by neither
		// name is simply not used.
		if exists(filepath.Join(root, "cpu")) {
			s = append(s, cgroup1.NewCpu(root))
		}
		if exists(filepath.Join(root, "cpuacct")) {
			s = append(s, cgroup1.NewCpuacct(root))
		}
		if exists(filepath.Join(root, "pids")) {
			s = append(s, cgroup1.NewPids(root))
		}
		if exists(filepath.Join(root, "cpuset")) {
			s = append(s, cgroup1.NewCpuset(root))
		}
		return s, nil
	}
	return m, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func (m *v1) Name() string { return "cgroupfs v1" }

func (m *v1) opts() []cgroup1.InitOpts {
	return []cgroup1.InitOpts{cgroup1.WithHierarchy(m.subsystems), func(c *cgroup1.InitConfig) error { c.InitCheck = requireMemory; return nil }}
}

// requireMemory makes a missing memory controller an error: a sandbox
// cgroup that cannot cap memory is not one.
func requireMemory(s cgroup1.Subsystem, _ cgroup1.Path, err error) error {
	if s.Name() == cgroup1.Memory {
		return fmt.Errorf("memory controller: %w", err)
	}
	return cgroup1.ErrIgnoreSubsystem
}

func (m *v1) New(_ context.Context, path string, l Limits) (Cgroup, error) {
	if !ValidPath(path) {
		return nil, fmt.Errorf("cgroup path %q is not an absolute, clean path below the root: %w", path, ErrUnsupported)
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(path), specResources(l, false), m.opts()...)
	if err != nil {
		return nil, fmt.Errorf("create v1 cgroup %s: %w", path, err)
	}
	c := &v1Cgroup{m: m, path: path, cg: cg}
	if l.CPUs != "" {
		if err := c.setCPUs(l.CPUs); err != nil {
			cg.Delete()
			return nil, err
		}
	}
	return c, nil
}

func (m *v1) Remove(ctx context.Context, path string) error {
	if !ValidPath(path) {
		return fmt.Errorf("cgroup path %q: %w", path, ErrUnsupported)
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path), m.opts()...)
	if errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load v1 cgroup %s: %w", path, err)
	}
	c := &v1Cgroup{m: m, path: path, cg: cg}
	pids, _ := c.Pids(ctx)
	killAll(pids)
	return c.Delete(ctx)
}

type v1Cgroup struct {
	m    *v1
	path string
	cg   cgroup1.Cgroup
}

func (c *v1Cgroup) Path() string { return c.path }

func (c *v1Cgroup) Add(_ context.Context, pid int) error {
	// cgroup.procs moves every thread of the process.
	if err := c.cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("move pid %d into %s: %w", pid, c.path, err)
	}
	return nil
}

func (c *v1Cgroup) Update(_ context.Context, l Limits) error {
	if err := c.cg.Update(specResources(l, true)); err != nil {
		return fmt.Errorf("update v1 cgroup %s: %w", c.path, err)
	}
	return c.setCPUs(l.CPUs)
}

// setCPUs writes cpuset.cpus: cpus, or for "" the parent's CPUs (a v1
// cpuset cannot be emptied to mean "all").
func (c *v1Cgroup) setCPUs(cpus string) error {
	dir := filepath.Join(c.m.root, "cpuset", c.path)
	if !exists(dir) {
		if cpus == "" {
			return nil
		}
		return fmt.Errorf("cpuset %q for %s: the host has no v1 cpuset hierarchy: %w", cpus, c.path, ErrUnsupported)
	}
	if cpus == "" {
		parent, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "cpuset.cpus"))
		if err != nil {
			return fmt.Errorf("read the parent's cpuset of %s: %w", c.path, err)
		}
		cpus = string(parent)
	}
	if err := os.WriteFile(filepath.Join(dir, "cpuset.cpus"), []byte(cpus), 0); err != nil {
		return fmt.Errorf("cpuset %q for %s: %w", strings.TrimSpace(cpus), c.path, err)
	}
	return nil
}

func (c *v1Cgroup) Pids(context.Context) ([]int, error) {
	return readProcs(filepath.Join(c.m.root, "memory", c.path, "cgroup.procs"))
}

func (c *v1Cgroup) Delete(ctx context.Context) error {
	return retryDelete(ctx, c.path, func() error {
		err := c.cg.Delete()
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		return err
	})
}

// specResources turns Limits into the OCI resources containerd's packages
// take. With update, a zero limit is written as -1 ("unlimited"), so that
// lifting a limit really lifts it; on create, unset fields stay unwritten.
func specResources(l Limits, update bool) *specs.LinuxResources {
	r := &specs.LinuxResources{}
	unlimited := int64(-1)
	switch {
	case l.MemoryBytes > 0:
		r.Memory = &specs.LinuxMemory{Limit: &l.MemoryBytes}
	case update:
		r.Memory = &specs.LinuxMemory{Limit: &unlimited}
	}
	cpu := &specs.LinuxCPU{}
	set := false
	if l.CPUQuotaUsec > 0 && l.CPUPeriodUsec > 0 {
		cpu.Quota, cpu.Period = &l.CPUQuotaUsec, &l.CPUPeriodUsec
		set = true
	} else if update {
		cpu.Quota = &unlimited
		set = true
	}
	if l.CPUShares > 0 {
		cpu.Shares = &l.CPUShares
		set = true
	}
	if set {
		r.CPU = cpu
	}
	return r
}
