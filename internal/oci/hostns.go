package oci

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A container in a VM cannot share a namespace of the host: the guest
// kernel has its own. containerd's CRI plugin asks for the host's PID or
// IPC namespace (a pod's hostPID or hostIPC) by leaving the namespace out
// of the spec, as runc would then keep the runtime's own; inside the guest
// the container would silently get the VM's namespaces instead, which is
// neither what the pod asked for (seeing the node's processes, its SysV
// IPC) nor isolated as a pod normally is. So such specs are refused, as is
// a namespace path on a container that joins no sandbox (a path can only
// name a host process's namespace then).
var hostSharable = []struct {
	ns    specs.LinuxNamespaceType
	field string // the Kubernetes pod field that asks for it
}{
	{specs.PIDNamespace, "hostPID"},
	{specs.IPCNamespace, "hostIPC"},
}

// CheckHostNamespaces returns an error naming the setting when spec asks
// for a namespace of the host that a VM cannot give it. joinsSandbox is
// true for a CRI app container, whose namespace paths name its pod's
// sandbox container (rewritten for the guest by ForGuest).
func CheckHostNamespaces(spec *specs.Spec, joinsSandbox bool) error {
	if spec.Linux == nil {
		return nil
	}
	for _, h := range hostSharable {
		entry, ok := Namespace(spec, h.ns)
		switch {
		case !ok:
			return fmt.Errorf("the spec has no %s namespace, which asks for the host's (Kubernetes %s: true); a Berth container runs in a VM and cannot share the host's %s namespace: run the pod without %s, or with a runc runtime class",
				h.ns, h.field, h.ns, h.field)
		case entry.Path != "" && !joinsSandbox:
			return fmt.Errorf("the spec joins the %s namespace at %s, a host process's; a Berth container runs in a VM and cannot join it", h.ns, entry.Path)
		}
	}
	return nil
}
