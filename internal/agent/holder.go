package agent

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	cgmanager "github.com/opencontainers/cgroups/manager"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/agent/podholder"
	"github.com/berth-runtime/berth/internal/oci"
)

// A CRI pod's sandbox container runs no program of its own: its process
// only holds the pod's namespaces, which the app containers join by the
// pid the agent returns, and reaps orphans when it is PID 1 of a shared
// PID namespace. So instead of running the pause image through runc (a
// whole runc init, ~0.25 s under TCG, for every pod), the agent starts
// the pod's namespace holder (package podholder): this binary again,
// cloned into the spec's new namespaces, confined and waiting in C. It
// lives in a cgroup of its own, as a container would, so that Stats,
// WaitOOM, Pause and Update treat it as one.

// holdsPodNamespaces reports whether spec is a CRI pod sandbox's, whose
// process the holder replaces. A sandbox with a seccomp profile (a pod
// whose securityContext asks for RuntimeDefault, say) still runs its
// pause image through runc, which applies the profile: the holder has no
// way to, and a profile is never dropped (docs/security.md).
func holdsPodNamespaces(spec *specs.Spec) bool {
	return oci.IsPodSandbox(spec.Annotations) && spec.Linux.Seccomp == nil
}

// holderNamespaces maps the spec's new namespaces to clone flags. Joining
// a namespace by path is the app containers' business, never the
// sandbox's; a user namespace the holder does not do.
func holderNamespaces(nss []specs.LinuxNamespace) (uintptr, error) {
	var flags uintptr
	for _, ns := range nss {
		if ns.Path != "" {
			return 0, fmt.Errorf("pod sandbox: joining the %s namespace %s: %w", ns.Type, ns.Path, errdefs.ErrNotImplemented)
		}
		f, ok := holderCloneFlags[ns.Type]
		if !ok {
			return 0, fmt.Errorf("pod sandbox: a %s namespace: %w", ns.Type, errdefs.ErrNotImplemented)
		}
		flags |= f
	}
	return flags, nil
}

var holderCloneFlags = map[specs.LinuxNamespaceType]uintptr{
	specs.PIDNamespace:     unix.CLONE_NEWPID,
	specs.IPCNamespace:     unix.CLONE_NEWIPC,
	specs.UTSNamespace:     unix.CLONE_NEWUTS,
	specs.MountNamespace:   unix.CLONE_NEWNS,
	specs.CgroupNamespace:  unix.CLONE_NEWCGROUP,
	specs.NetworkNamespace: unix.CLONE_NEWNET,
}

// sysctlKey is a well-formed sysctl name: it becomes a path below
// /proc/sys in the holder.
var sysctlKey = regexp.MustCompile(`^[a-z0-9_-]+(\.[a-z0-9_-]+)+$`)

// holderSysctls turns the spec's sysctls into the holder's KEY=VALUE
// arguments. As runc does, it accepts only sysctls of a namespace the
// holder has of its own (IPC and UTS ones; the agent has already written
// the network's, applyPodNetSysctls), so that none reaches the guest as
// a whole.
func holderSysctls(sysctl map[string]string, flags uintptr) ([]string, error) {
	var out []string
	for key, value := range sysctl {
		ok := sysctlKey.MatchString(key) && !strings.ContainsAny(value, "\x00\n")
		switch {
		case !ok:
			return nil, fmt.Errorf("pod sandbox: sysctl %q is not a valid name or value: %w", key, errdefs.ErrInvalidArgument)
		case flags&unix.CLONE_NEWIPC != 0 && (strings.HasPrefix(key, "fs.mqueue.") || slices.Contains(ipcSysctls, key)):
		case flags&unix.CLONE_NEWUTS != 0 && (key == "kernel.hostname" || key == "kernel.domainname"):
		default:
			return nil, fmt.Errorf("pod sandbox: sysctl %q is not in a namespace of the pod's own: %w", key, errdefs.ErrInvalidArgument)
		}
		out = append(out, key+"="+value)
	}
	slices.Sort(out)
	return out, nil
}

// ipcSysctls are the IPC namespace's sysctls besides fs.mqueue.* (runc's
// libcontainer/configs/validate list).
var ipcSysctls = []string{
	"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
	"kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
}

// createHolder starts the namespace holder for the pod sandbox id and
// registers it as that container.
func (s *Service) createHolder(id string, spec *specs.Spec) (*container, error) {
	flags, err := holderNamespaces(spec.Linux.Namespaces)
	if err != nil {
		return nil, err
	}
	sysctls, err := holderSysctls(spec.Linux.Sysctl, flags)
	if err != nil {
		return nil, err
	}
	proc, err := podholder.Start(flags, spec.Hostname, spec.Root.Path, sysctls)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", id, err)
	}
	cg, err := cgmanager.New(&cgroups.Cgroup{Path: spec.Linux.CgroupsPath, Resources: &cgroups.Resources{}})
	if err == nil {
		if err = cg.Apply(proc.Pid); err != nil {
			cg.Destroy()
		}
	}
	if err != nil {
		proc.Kill()
		proc.Wait()
		return nil, fmt.Errorf("container %q: the pod holder's cgroup %s: %w", id, spec.Linux.CgroupsPath, err)
	}
	p := newProcess("", nil, nil)
	p.holder = proc
	p.markIOReady() // no stdio
	// A holder's pid is known (holderProcess.Pid cannot fail), so this
	// only starts the reaper.
	p.markStarted(nil)
	return &container{id: id, holderCgroup: cg, init: p, execs: map[string]*process{}, privatePidNS: flags&unix.CLONE_NEWPID != 0, cgroupPaths: cg.GetPaths()}, nil
}

// holderProcess is the holder as a procHandle.
type holderProcess struct{ *os.Process }

func (h holderProcess) Pid() (int, error) { return h.Process.Pid, nil }

// errHolderExec refuses an exec into a pod sandbox: it runs no program,
// and has no root file system to run one in (CRI never asks).
func errHolderExec(id string) error {
	return fmt.Errorf("container %q is a pod sandbox, which runs no program to exec beside: %w", id, errdefs.ErrFailedPrecondition)
}
