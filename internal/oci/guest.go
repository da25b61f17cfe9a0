package oci

import (
	"fmt"
	"path"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// GuestSpecOptions say how to adapt a host spec to the guest.
type GuestSpecOptions struct {
	// ContainerID names the container.
	ContainerID string
	// SandboxInitPid is the guest pid of the pod's sandbox (pause)
	// container, 0 if there is none yet. Namespaces that a CRI app
	// container joins by host path (/proc/<pid>/ns/...) are joined by this
	// pid inside the guest instead.
	SandboxInitPid uint32
	// PIDNamespacePid, when not 0, is the guest pid whose PID namespace a
	// container that joins one by host path joins, instead of the sandbox
	// container's: the target of a CRI NamespaceMode_TARGET container
	// (kubectl debug --target). The host path cannot say which container
	// it names, because every task of a pod reports the VM's pid; the
	// shim works the target out (shim.pidNamespaceTarget).
	PIDNamespacePid uint32
	// Rlimits are the limits the container's process inherits where the
	// spec sets none (OwnRlimits).
	Rlimits []specs.POSIXRlimit
}

// NamespaceByPath reports whether spec joins an existing namespace of type
// t by path.
func NamespaceByPath(spec *specs.Spec, t specs.LinuxNamespaceType) bool {
	ns, ok := Namespace(spec, t)
	return ok && ns.Path != ""
}

// HasOwnNamespace reports whether spec makes a new namespace of type t.
func HasOwnNamespace(spec *specs.Spec, t specs.LinuxNamespaceType) bool {
	ns, ok := Namespace(spec, t)
	return ok && ns.Path == ""
}

// Namespace returns spec's entry for namespace type t, the last one if the
// spec repeats it, and whether there is one.
func Namespace(spec *specs.Spec, t specs.LinuxNamespaceType) (specs.LinuxNamespace, bool) {
	var found specs.LinuxNamespace
	ok := false
	if spec == nil || spec.Linux == nil {
		return found, false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == t {
			found, ok = ns, true
		}
	}
	return found, ok
}

// ForGuest returns a copy of spec adapted to run inside the guest. What
// refers to the host cannot be honoured inside the VM and is rewritten:
//
//   - root.path becomes the container's place in the virtio-fs share;
//   - namespace paths point at the sandbox container's namespaces in the
//     guest (a PID namespace at PIDNamespacePid's, when set), or are
//     dropped, giving a new namespace; a network namespace
//     the sandbox container joins by path is the pod's, which the host
//     connected to the VM's NICs: the sandbox container runs in the
//     guest's own network namespace, where the agent configured them;
//   - the cgroup path is Berth's own guest cgroup, because host paths (and
//     systemd slice syntax) mean nothing to the guest's cgroupfs;
//   - hooks name host binaries and are dropped (they run on the host side
//     of containerd, not in the guest);
//   - AppArmor and SELinux labels name host policies the guest does not
//     load; the VM is the boundary;
//   - the resource limits the spec leaves out are o.Rlimits, the ones
//     runc's process would inherit on the host (rlimits.go).
//
// Bind mounts of host paths are handled by the sandbox, which shares them.
func ForGuest(spec *specs.Spec, o GuestSpecOptions) (*specs.Spec, error) {
	if spec.Process == nil || spec.Root == nil {
		return nil, fmt.Errorf("spec needs process and root")
	}
	g := *spec
	root := *spec.Root
	root.Path = GuestRootfs(o.ContainerID)
	g.Root = &root
	proc := *spec.Process
	proc.ApparmorProfile = ""
	proc.SelinuxLabel = ""
	proc.Rlimits = InheritRlimits(spec.Process.Rlimits, o.Rlimits)
	g.Process = &proc
	g.Hooks = nil
	g.Mounts = slices.Clone(spec.Mounts)
	if spec.Linux != nil {
		l := *spec.Linux
		l.CgroupsPath = "/berth/" + o.ContainerID
		l.MountLabel = ""
		l.Namespaces = nil
		for _, ns := range spec.Linux.Namespaces {
			if ns.Path != "" {
				if o.SandboxInitPid == 0 && ns.Type == specs.NetworkNamespace {
					continue // the guest's own namespace
				}
				pid := o.SandboxInitPid
				if ns.Type == specs.PIDNamespace && o.PIDNamespacePid != 0 {
					pid = o.PIDNamespacePid
				}
				if pid == 0 {
					ns.Path = ""
				} else {
					ns.Path = fmt.Sprintf("/proc/%d/ns/%s", pid, nsFile(ns.Type))
				}
			}
			l.Namespaces = append(l.Namespaces, ns)
		}
		g.Linux = &l
	}
	return &g, nil
}

// nsFile maps an OCI namespace type to its /proc/<pid>/ns file name.
func nsFile(t specs.LinuxNamespaceType) string {
	switch t {
	case specs.PIDNamespace:
		return "pid"
	case specs.NetworkNamespace:
		return "net"
	case specs.MountNamespace:
		return "mnt"
	case specs.IPCNamespace:
		return "ipc"
	case specs.UTSNamespace:
		return "uts"
	case specs.UserNamespace:
		return "user"
	case specs.CgroupNamespace:
		return "cgroup"
	case specs.TimeNamespace:
		return "time"
	}
	return string(t)
}

// IsBindMount reports whether m binds a host path.
func IsBindMount(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// IsReadOnly reports whether a mount's options make it read-only; as for
// mount(8), the last of "ro" and "rw" wins.
func IsReadOnly(m specs.Mount) bool {
	ro := false
	for _, o := range m.Options {
		switch o {
		case "ro":
			ro = true
		case "rw":
			ro = false
		}
	}
	return ro
}

// GuestVolumePath is where the guest sees a host source shared for the
// containers of a sandbox that mount it. Container ids cannot start with
// '.', so the directory cannot be a container's.
func GuestVolumePath(name string) string {
	return path.Join(GuestSharedDir, ".volumes", name)
}

// SandboxIDAnnotations name the pod a container belongs to, in the order
// they are consulted: CRI's annotation (containerd), then CRI-O's.
var SandboxIDAnnotations = []string{
	"io.kubernetes.cri.sandbox-id",
	"io.kubernetes.cri-o.SandboxID",
}

// ContainerTypeAnnotations say whether a container is a pod's sandbox.
var ContainerTypeAnnotations = []string{
	"io.kubernetes.cri.container-type",
	"io.kubernetes.cri-o.ContainerType",
}

// IsPodSandbox says whether the annotations mark a CRI pod's sandbox
// (pause) container, as opposed to an app container or a container that
// is its own sandbox (ctr run).
func IsPodSandbox(annotations map[string]string) bool {
	for _, k := range ContainerTypeAnnotations {
		if annotations[k] == "sandbox" {
			return true
		}
	}
	return false
}

// PodInfo tells, from a spec's annotations, which sandbox a container
// belongs to and whether it is that sandbox's own (pause) container. A
// container without CRI annotations is its own sandbox.
func PodInfo(containerID string, annotations map[string]string) (sandboxID string, isSandbox bool) {
	sandboxID = containerID
	for _, k := range SandboxIDAnnotations {
		if v := annotations[k]; v != "" {
			sandboxID = v
			break
		}
	}
	isSandbox = sandboxID == containerID
	for _, k := range ContainerTypeAnnotations {
		switch annotations[k] {
		case "sandbox":
			isSandbox = true
		case "container":
			isSandbox = false
		}
	}
	return sandboxID, isSandbox
}
