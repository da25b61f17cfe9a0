package shim

import (
	"fmt"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/oci"
)

// pidNamespaceTarget says whose PID namespace, in the guest, container id
// joins when its spec joins one by path: the guest pid of that container's
// init, or 0 for the sandbox container's.
//
// containerd writes the path as /proc/<task pid>/ns/pid, the sandbox's
// task pid for a pod that shares one PID namespace (CRI
// NamespaceMode_POD) and the target's for a debug container
// (NamespaceMode_TARGET, kubectl debug --target). Every task of a Berth pod
// reports the VM's pid, so the path cannot tell them apart; the pod's
// containers can. In a pod that shares one namespace no app container has
// its own, and the sandbox's is the answer. In a pod where each container
// has its own, a container that joins one by path is a debug container,
// and its target is the one running container with its own namespace. With
// several, the target cannot be told, and the container is refused rather
// than given a namespace it did not ask for.
func (s *service) pidNamespaceTarget(id string, isSandbox bool, spec *specs.Spec) (uint32, error) {
	if isSandbox || !oci.NamespaceByPath(spec, specs.PIDNamespace) {
		return 0, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var targets []string
	var pid uint32
	for cid, c := range s.containers {
		if cid == id || c.podSandbox || !c.ownPIDNS || c.init == nil || c.init.hasExited() {
			continue
		}
		targets = append(targets, cid)
		pid = c.init.sp.Pid()
	}
	switch len(targets) {
	case 0:
		return 0, nil
	case 1:
		return pid, nil
	}
	return 0, fmt.Errorf("container %q joins another container's PID namespace (kubectl debug --target), and %d containers of the pod (%v) have their own: every task of a Berth pod reports the VM's pid, so the target cannot be told apart; target a pod with one such container, or share the pod's PID namespace (shareProcessNamespace): %w",
		id, len(targets), targets, errdefs.ErrNotImplemented)
}
