package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/config"
)

// cgroupFileName records the sandbox's host cgroup, so that a fresh
// process (containerd's `shim delete`, CleanupStale) can remove it after
// the owner died.
const cgroupFileName = "cgroup.json"

type cgroupRecord struct {
	Driver string `json:"driver"`
	Path   string `json:"path"`
	// Containers are the containers' own host cgroups (only with
	// sandbox_cgroup_only = false and a pod cgroup from the spec).
	Containers []string `json:"containers,omitempty"`
}

// detectHost reads the host's cgroup layout once per process: it does not
// change under a running shim, and every sandbox must agree on it.
var detectHost = sync.OnceValues(cgroup.Detect)

// HostFacts is what config.Load needs to know about this host to reject
// cgroup settings that cannot work here (see config.Host). A host whose
// mount table cannot be read counts as having no cgroups.
func HostFacts() *config.Host {
	h, err := detectHost()
	if err != nil {
		return &config.Host{CgroupLayout: config.LayoutNone, MemTotalMiB: hostMemTotalMiB()}
	}
	return &config.Host{CgroupLayout: string(h.Layout), Systemd: h.Systemd, MemTotalMiB: hostMemTotalMiB()}
}

// NewCgroupManager picks the cgroup implementation for cfg on host h.
func NewCgroupManager(cfg *config.Config, h cgroup.Host) (cgroup.Manager, error) {
	m, err := cgroup.NewManager(cgroup.Options{Driver: cfg.Cgroup.Manager, Host: h})
	if err != nil {
		// Load refuses these combinations already; reaching here means
		// the host changed under a running shim.
		return nil, fmt.Errorf("cgroup.manager = %q on this host (%s): %w: %w", cfg.Cgroup.Manager, h, err, errdefs.ErrFailedPrecondition)
	}
	return m, nil
}

// managers caches one Manager per driver for this process: the
// implementation is picked once, at the first sandbox.
var managers sync.Map // driver -> cgroup.Manager

func hostCgroupManager(cfg *config.Config) (cgroup.Manager, error) {
	if m, ok := managers.Load(cfg.Cgroup.Manager); ok {
		return m.(cgroup.Manager), nil
	}
	h, err := detectHost()
	if err != nil {
		return nil, err
	}
	m, err := NewCgroupManager(cfg, h)
	if err != nil {
		return nil, err
	}
	actual, _ := managers.LoadOrStore(cfg.Cgroup.Manager, m)
	return actual.(cgroup.Manager), nil
}

// CgroupPath is the host cgroup that holds sandbox id's VMM (QEMU with
// all its threads, and virtiofsd). specPath is the sandbox container's
// linux.cgroupsPath as the caller chose it ("" when the spec names none,
// see oci.CgroupsPath):
//
//   - no spec path (`berth run`, `ctr run`): Berth's own "<parent>/<id>"
//     (a scope in the parent slice with systemd);
//   - sandbox_cgroup_only = true: the spec's path itself (below the
//     kubelet's pod cgroup), one cgroup for the whole VM;
//   - sandbox_cgroup_only = false: "berth-<id>" beside it, in the pod
//     cgroup, while the containers' own paths get their limits (see
//     perContainerCgroups).
//
// Either way the VM's cost is inside the pod's cgroup, where the kubelet
// and containerd's PodSandboxStats read it.
func CgroupPath(cfg *config.Config, id, specPath string) (string, error) {
	c := cfg.Cgroup
	if specPath == "" {
		if c.Manager == config.CgroupManagerSystemd {
			return c.Parent + ":berth:" + id, nil
		}
		return c.Parent + "/" + id, nil
	}
	p, err := cgroup.SpecPath(c.Manager, specPath)
	if err != nil {
		return "", fmt.Errorf("pod cgroup: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if c.SandboxCgroupOnly {
		return p, nil
	}
	p, err = cgroup.Sibling(c.Manager, p, id)
	if err != nil {
		return "", fmt.Errorf("pod cgroup: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return p, nil
}

// createCgroup makes the sandbox's cgroup and records it.
func (s *Sandbox) createCgroup(ctx context.Context, opts Options, vmMiB int) (cgroup.Cgroup, error) {
	m, err := hostCgroupManager(s.cfg)
	if err != nil {
		return nil, err
	}
	path, err := CgroupPath(s.cfg, s.id, opts.CgroupsPath)
	if err != nil {
		return nil, err
	}
	s.vmMiB = vmMiB
	s.pod.perContainer = opts.CgroupsPath != "" && !s.cfg.Cgroup.SandboxCgroupOnly
	cg, err := m.New(ctx, path, cgroup.Limits{MemoryBytes: s.cfg.SandboxMemoryLimitBytes(vmMiB)})
	if err != nil {
		return nil, fmt.Errorf("sandbox cgroup: %w", err)
	}
	s.cgroup = cg
	if err := s.writeCgroupRecordLocked(); err != nil {
		cg.Delete(ctx)
		return nil, err
	}
	return cg, nil
}

// writeCgroupRecordLocked records every host cgroup of the sandbox (its
// own and, with sandbox_cgroup_only = false, its containers'), replacing
// the file atomically so that a reader after a crash sees one whole
// version.
func (s *Sandbox) writeCgroupRecordLocked() error {
	rec := cgroupRecord{Driver: s.cfg.Cgroup.Manager, Path: s.cgroup.Path()}
	for _, c := range s.pod.containers {
		rec.Containers = append(rec.Containers, c.Path())
	}
	b, _ := json.Marshal(rec)
	tmp := s.path(cgroupFileName + ".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path(cgroupFileName))
}

// removeRecordedCgroup removes the cgroup recorded in dir (Remove kills
// whatever still runs in it: only the dead sandbox's VMM and virtiofsd
// were ever put there).
func removeRecordedCgroup(ctx context.Context, dir string) error {
	b, err := os.ReadFile(dir + "/" + cgroupFileName)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rec cgroupRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("%s: %w", cgroupFileName, err)
	}
	h, err := detectHost()
	if err != nil {
		return err
	}
	m, err := cgroup.NewManager(cgroup.Options{Driver: rec.Driver, Host: h})
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range append(rec.Containers, rec.Path) {
		errs = append(errs, m.Remove(ctx, p))
	}
	return errors.Join(errs...)
}

// SetVMMemory records that the VM now has memoryMiB of memory and moves
// the cgroup's memory limit with it (memory plus cgroup.overhead_memory).
// The memory resize path calls it before growing the VM and after
// shrinking it, so the limit never falls below what the guest may use.
func (s *Sandbox) SetVMMemory(ctx context.Context, memoryMiB int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vmMiB = memoryMiB
	return s.applyCgroupLocked(ctx)
}

// cpuLimit is one container's CPU settings from its OCI spec.
type cpuLimit struct {
	quotaUsec  int64
	periodUsec uint64
	shares     uint64
	// cpus is the container's cpuset.cpus: host CPUs (the kubelet's
	// static CPU manager pins Guaranteed pods' containers), which the
	// guest does not apply and the VMM's cgroup does.
	cpus string
}

func cpuLimitOf(res *specs.LinuxResources) cpuLimit {
	var l cpuLimit
	if res == nil || res.CPU == nil {
		return l
	}
	if res.CPU.Quota != nil && *res.CPU.Quota > 0 {
		l.quotaUsec = *res.CPU.Quota
		l.periodUsec = 100000
		if res.CPU.Period != nil && *res.CPU.Period > 0 {
			l.periodUsec = *res.CPU.Period
		}
	}
	if res.CPU.Shares != nil {
		l.shares = *res.CPU.Shares
	}
	l.cpus = res.CPU.Cpus
	return l
}

// setContainerCPU records a container's CPU settings (nil res: the
// container is gone) and re-applies the sandbox's limits.
func (s *Sandbox) setContainerCPU(ctx context.Context, id string, res *specs.LinuxResources, gone bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gone {
		delete(s.cpu, id)
	} else {
		s.cpu[id] = cpuLimitOf(res)
	}
	return s.applyCgroupLocked(ctx)
}

// limitsLocked sizes the sandbox cgroup: memory is the VM plus overhead;
// the CPU quota is the sum of the containers' quotas, but only when every
// container has one (a single unlimited container makes the pod
// unlimited, as it would be under runc); shares add up; the VMM may run
// on the union of the containers' cpusets, again only when every one has
// a cpuset (an unpinned container may run anywhere). The container that
// shares the sandbox's id is either a CRI pod's pause container, which
// asks for nothing and does not count, or a plain container (ctr run)
// that is the whole pod, whose limits do count.
func (s *Sandbox) limitsLocked() cgroup.Limits {
	l := cgroup.Limits{MemoryBytes: s.cfg.SandboxMemoryLimitBytes(s.vmMiB)}
	const period = 100000
	var quota int64
	var cpusets []string
	limited, pinned, n := true, true, 0
	for id, c := range s.cpu {
		if id == s.id && c.quotaUsec == 0 && c.cpus == "" {
			continue
		}
		n++
		l.CPUShares += c.shares
		if c.cpus == "" {
			pinned = false
		}
		cpusets = append(cpusets, c.cpus)
		if c.quotaUsec == 0 {
			limited = false
			continue
		}
		quota += c.quotaUsec * period / int64(c.periodUsec)
	}
	if limited && n > 0 {
		l.CPUQuotaUsec, l.CPUPeriodUsec = quota, period
	}
	if pinned && n > 0 {
		cpus, err := cgroup.UnionCPULists(cpusets...)
		if err != nil {
			logrus.WithError(err).WithField("sandbox", s.id).Warn("a container's cpuset does not parse; the VMM is not pinned")
		}
		l.CPUs = cpus
	}
	return l
}

func (s *Sandbox) applyCgroupLocked(ctx context.Context) error {
	l := s.limitsLocked()
	if err := s.cgroup.Update(ctx, l); err != nil {
		return err
	}
	logrus.WithField("sandbox", s.id).WithField("memory_bytes", l.MemoryBytes).
		WithField("cpu_quota_usec", l.CPUQuotaUsec).Debug("sandbox cgroup updated")
	return nil
}

// CgroupPids lists the host processes in the sandbox's cgroup.
func (s *Sandbox) CgroupPids(ctx context.Context) ([]int, error) { return s.cgroup.Pids(ctx) }

// Cgroup returns the sandbox cgroup's path (see cgroup.Cgroup.Path).
func (s *Sandbox) Cgroup() string { return s.cgroup.Path() }

// protectFromOOM lowers the OOM score of pids (virtiofsd's) so that,
// when the sandbox cgroup hits its limit, the kernel kills QEMU (the VM
// ends and the pod is reported dead) rather than virtiofsd (which would
// leave a VM whose root file system hangs). Lowering a score needs
// CAP_SYS_RESOURCE, which root lacks on some hosts (inside containers,
// on these test machines): there the sandbox runs without the preference. That is a property of
// the host, the same for every sandbox, so it is logged at info level;
// as a warning it would land on the stderr of every `berth run`, mixed
// into the container's own output.
func protectFromOOM(pids ...int) {
	var err error
	for _, pid := range pids {
		if e := os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte("-500"), 0); e != nil && err == nil {
			err = e
		}
	}
	log := logrus.WithError(err).WithField("pids", pids)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrPermission):
		log.Info("cannot lower virtiofsd's oom_score_adj without CAP_SYS_RESOURCE; an OOM in the sandbox cgroup may pick it instead of QEMU")
	default:
		log.Warn("lower virtiofsd's oom_score_adj")
	}
}

// addProcessTree moves pid and its descendants into cg and protects them
// from the OOM killer (protectFromOOM), for a helper that forks after it
// starts (virtiofsd's namespace sandbox). A parent moves before its
// children are listed, so a child forked after the listing is born in cg.
func addProcessTree(ctx context.Context, cg cgroup.Cgroup, pid int) error {
	var moved []int
	for todo := []int{pid}; len(todo) > 0; todo = todo[1:] {
		if err := cg.Add(ctx, todo[0]); err != nil {
			return err
		}
		moved = append(moved, todo[0])
		todo = append(todo, childPids(todo[0])...)
	}
	protectFromOOM(moved...)
	return nil
}

// childPids lists pid's children: from /proc/PID/task/*/children, or,
// on a kernel without CONFIG_PROC_CHILDREN, from every process's parent
// in /proc/*/stat. A process that is gone has none.
func childPids(pid int) []int {
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	if len(tasks) == 0 {
		return childPidsByScan(pid)
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if errors.Is(err, os.ErrNotExist) {
			return childPidsByScan(pid)
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// childPidsByScan finds pid's children by the parent each process names
// in /proc/PID/stat.
func childPidsByScan(pid int) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, d := range dirs {
		n, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if f := procStat(n); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}
