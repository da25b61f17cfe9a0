package oci

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestForGuestRewritesHostReferences(t *testing.T) {
	spec := DefaultSpec("/host/bundle/rootfs", ProcessOptions{Args: []string{"sh"}})
	spec.Process.ApparmorProfile = "cri-containerd.apparmor.d"
	spec.Hooks = &specs.Hooks{}
	spec.Linux.CgroupsPath = "kubepods-besteffort.slice:cri-containerd:abc"
	spec.Linux.Namespaces = append(spec.Linux.Namespaces[:0:0],
		specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/4242/ns/net"},
		specs.LinuxNamespace{Type: specs.PIDNamespace})
	g, err := ForGuest(spec, GuestSpecOptions{ContainerID: "c1", SandboxInitPid: 7})
	if err != nil {
		t.Fatal(err)
	}
	if g.Root.Path != "/run/berth/shared/c1/rootfs" || spec.Root.Path != "/host/bundle/rootfs" {
		t.Errorf("root: guest %q, host spec now %q", g.Root.Path, spec.Root.Path)
	}
	if g.Linux.CgroupsPath != "/berth/c1" || g.Hooks != nil || g.Process.ApparmorProfile != "" {
		t.Errorf("cgroup %q hooks %v apparmor %q", g.Linux.CgroupsPath, g.Hooks, g.Process.ApparmorProfile)
	}
	if g.Linux.Namespaces[0].Path != "/proc/7/ns/net" || g.Linux.Namespaces[1].Path != "" {
		t.Errorf("namespaces %+v", g.Linux.Namespaces)
	}
	if spec.Linux.Namespaces[0].Path != "/proc/4242/ns/net" {
		t.Error("ForGuest modified the host spec")
	}
	// The sandbox container: the pod's network namespace is the guest's
	// own (the VM's NICs are there), so it is left out; other paths are
	// dropped, giving new namespaces.
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UTSNamespace, Path: "/proc/4242/ns/uts"})
	g, _ = ForGuest(spec, GuestSpecOptions{ContainerID: "c1"})
	want := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.UTSNamespace}}
	if len(g.Linux.Namespaces) != 2 || g.Linux.Namespaces[0] != want[0] || g.Linux.Namespaces[1] != want[1] {
		t.Errorf("sandbox container namespaces %+v, want %+v", g.Linux.Namespaces, want)
	}
}

func TestPodInfo(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ann         map[string]string
		wantSandbox string
		wantIs      bool
	}{
		{"plain ctr run", nil, "c1", true},
		{"cri sandbox", map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "c1"}, "c1", true},
		{"cri app container", map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"}, "pod1", false},
	} {
		id, is := PodInfo("c1", tc.ann)
		if id != tc.wantSandbox || is != tc.wantIs {
			t.Errorf("%s: got (%q, %v), want (%q, %v)", tc.name, id, is, tc.wantSandbox, tc.wantIs)
		}
	}
}

func TestCgroupsPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"/default/abc", ""}, // containerd's placeholder
		{"/other/abc", "/other/abc"},
		{"/kubepods/burstable/pod1/abc", "/kubepods/burstable/pod1/abc"},
		{"kubepods-pod1.slice:cri-containerd:abc", "kubepods-pod1.slice:cri-containerd:abc"},
	} {
		spec := &specs.Spec{Linux: &specs.Linux{CgroupsPath: tc.in}}
		if got := CgroupsPath(spec, "default", "abc"); got != tc.want {
			t.Errorf("CgroupsPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := CgroupsPath(&specs.Spec{}, "default", "abc"); got != "" {
		t.Errorf("no linux section: %q", got)
	}
}

// TestForGuestJoinsTheDebugTargetsPIDNamespace: a debug container
// (NamespaceMode_TARGET) joins its target's PID namespace and the
// sandbox's others.
func TestForGuestJoinsTheDebugTargetsPIDNamespace(t *testing.T) {
	spec := DefaultSpec("/r", ProcessOptions{Args: []string{"sh"}})
	spec.Linux.Namespaces = []specs.LinuxNamespace{
		{Type: specs.IPCNamespace, Path: "/proc/4242/ns/ipc"},
		{Type: specs.PIDNamespace, Path: "/proc/4242/ns/pid"},
		{Type: specs.MountNamespace},
	}
	if !NamespaceByPath(spec, specs.PIDNamespace) || HasOwnNamespace(spec, specs.PIDNamespace) || !HasOwnNamespace(spec, specs.MountNamespace) {
		t.Error("NamespaceByPath / HasOwnNamespace disagree with the spec")
	}
	g, err := ForGuest(spec, GuestSpecOptions{ContainerID: "dbg", SandboxInitPid: 7, PIDNamespacePid: 31})
	if err != nil {
		t.Fatal(err)
	}
	if g.Linux.Namespaces[0].Path != "/proc/7/ns/ipc" || g.Linux.Namespaces[1].Path != "/proc/31/ns/pid" || g.Linux.Namespaces[2].Path != "" {
		t.Errorf("namespaces %+v", g.Linux.Namespaces)
	}
}
