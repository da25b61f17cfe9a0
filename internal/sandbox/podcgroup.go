package sandbox

import (
	"context"
	"errors"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/config"
)

// podCgroups are the containers' own host cgroups with
// sandbox_cgroup_only = false: each container's linux.cgroupsPath exists
// on the host with that container's limits, as it would under runc, so
// that whoever walks the pod's cgroup tree (the kubelet, cAdvisor, an
// operator) finds every container with its limits. They hold no process:
// the containers run inside the guest, where the agent enforces the same
// limits; the host-side cost of the whole VM is the VMM's cgroup beside
// them ("berth-<id>", see CgroupPath). A v1 or v2 memory cgroup cannot
// split one process's memory between cgroups, so the guest's RAM cannot
// be charged per container on the host.
//
// With the systemd driver they are not made: a scope cannot exist
// without a process.
type podCgroups struct {
	perContainer bool                     // sandbox_cgroup_only = false and the spec named a pod cgroup
	containers   map[string]cgroup.Cgroup // container id -> its host cgroup; guarded by Sandbox.mu
}

func linuxResources(l *specs.Linux) *specs.LinuxResources {
	if l == nil {
		return nil
	}
	return l.Resources
}

// containerLimits are a container's spec resources as host cgroup limits.
func containerLimits(res *specs.LinuxResources) cgroup.Limits {
	var l cgroup.Limits
	if res != nil && res.Memory != nil && res.Memory.Limit != nil && *res.Memory.Limit > 0 {
		l.MemoryBytes = *res.Memory.Limit
	}
	c := cpuLimitOf(res)
	l.CPUQuotaUsec, l.CPUPeriodUsec, l.CPUShares, l.CPUs = c.quotaUsec, c.periodUsec, c.shares, c.cpus
	return l
}

// addContainerCgroup creates container id's own host cgroup at specPath
// (its linux.cgroupsPath, "" when it names none) when the sandbox keeps
// per-container cgroups.
func (s *Sandbox) addContainerCgroup(ctx context.Context, id, specPath string, res *specs.LinuxResources) error {
	if !s.pod.perContainer || specPath == "" || s.cfg.Cgroup.Manager == config.CgroupManagerSystemd {
		return nil
	}
	p, err := cgroup.SpecPath(s.cfg.Cgroup.Manager, specPath)
	if err != nil {
		return fmt.Errorf("container %q: %w", id, err)
	}
	if p == s.cgroup.Path() {
		return nil
	}
	m, err := hostCgroupManager(s.cfg)
	if err != nil {
		return err
	}
	cg, err := m.New(ctx, p, containerLimits(res))
	if err != nil {
		return fmt.Errorf("container %q host cgroup: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pod.containers == nil {
		s.pod.containers = map[string]cgroup.Cgroup{}
	}
	s.pod.containers[id] = cg
	if err := s.writeCgroupRecordLocked(); err != nil {
		delete(s.pod.containers, id)
		cg.Delete(ctx)
		return err
	}
	return nil
}

// updateContainerCgroup follows a container's new limits into its host
// cgroup. A failure is logged: the guest enforces the limits.
func (s *Sandbox) updateContainerCgroup(ctx context.Context, id string, res *specs.LinuxResources) {
	s.mu.Lock()
	cg := s.pod.containers[id]
	s.mu.Unlock()
	if cg == nil {
		return
	}
	if err := cg.Update(ctx, containerLimits(res)); err != nil {
		logrus.WithError(err).WithField("sandbox", s.id).WithField("container", id).Warn("update the container's host cgroup")
	}
}

// removeContainerCgroup deletes container id's host cgroup, if it has one.
func (s *Sandbox) removeContainerCgroup(ctx context.Context, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cg := s.pod.containers[id]
	if cg == nil {
		return
	}
	if err := cg.Delete(ctx); err != nil {
		logrus.WithError(err).WithField("sandbox", s.id).WithField("container", id).Warn("remove the container's host cgroup")
		return
	}
	delete(s.pod.containers, id)
	if err := s.writeCgroupRecordLocked(); err != nil {
		logrus.WithError(err).WithField("sandbox", s.id).Warn("record host cgroups")
	}
}

// deleteContainerCgroups removes every container's host cgroup (they hold
// no process, so this cannot wait on anything).
func (s *Sandbox) deleteContainerCgroups(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for id, cg := range s.pod.containers {
		if err := cg.Delete(ctx); err != nil {
			errs = append(errs, fmt.Errorf("container %q host cgroup: %w", id, err))
			continue
		}
		delete(s.pod.containers, id)
	}
	return errors.Join(errs...)
}
