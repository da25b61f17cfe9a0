package agent

import (
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The holder gets the sysctls of the namespaces it has of its own, and
// none that would reach the guest as a whole (runc refuses those too).
func TestHolderSysctlsStayInThePodsNamespaces(t *testing.T) {
	ipcUTS := uintptr(unix.CLONE_NEWIPC | unix.CLONE_NEWUTS)
	got, err := holderSysctls(map[string]string{"kernel.shmmax": "65536", "fs.mqueue.msg_max": "20", "kernel.domainname": "pod.local"}, ipcUTS)
	if want := []string{"fs.mqueue.msg_max=20", "kernel.domainname=pod.local", "kernel.shmmax=65536"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("holderSysctls = %v, %v; want %v", got, err, want)
	}
	for _, c := range []struct {
		key, value string
		flags      uintptr
		want       string
	}{
		{"kernel.shmmax", "1", unix.CLONE_NEWUTS, "not in a namespace of the pod's own"},
		{"vm.overcommit_memory", "1", ipcUTS, "not in a namespace of the pod's own"},
		{"kernel.shmmax/../../x", "1", ipcUTS, "not a valid name"},
		{"kernel..shmmax", "1", ipcUTS, "not a valid name"},
		{"kernel.shmmax", "1\nkernel.x=2", ipcUTS, "not a valid name or value"},
	} {
		if _, err := holderSysctls(map[string]string{c.key: c.value}, c.flags); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sysctl %q=%q: %v, want %q", c.key, c.value, err, c.want)
		}
	}
}

func TestHolderNamespacesAreNewOnes(t *testing.T) {
	flags, err := holderNamespaces([]specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}})
	if want := uintptr(unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWNS); err != nil || flags != want {
		t.Errorf("flags %#x, %v; want %#x", flags, err, want)
	}
	if _, err := holderNamespaces([]specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}}); err == nil {
		t.Error("a sandbox joining a namespace by path was accepted")
	}
	if _, err := holderNamespaces([]specs.LinuxNamespace{{Type: specs.UserNamespace}}); err == nil {
		t.Error("a user namespace was accepted")
	}
}

// Only a CRI pod sandbox gets the holder, and not one with a seccomp
// profile, which runc applies to its pause process.
func TestHolderReplacesOnlyAPodSandboxWithoutSeccomp(t *testing.T) {
	sandbox := map[string]string{"io.kubernetes.cri.container-type": "sandbox"}
	app := map[string]string{"io.kubernetes.cri.container-type": "container"}
	for _, c := range []struct {
		name        string
		annotations map[string]string
		seccomp     *specs.LinuxSeccomp
		want        bool
	}{
		{"pod sandbox", sandbox, nil, true},
		{"pod sandbox with seccomp", sandbox, &specs.LinuxSeccomp{DefaultAction: specs.ActErrno}, false},
		{"app container", app, nil, false},
		{"ctr run", nil, nil, false},
	} {
		spec := &specs.Spec{Annotations: c.annotations, Linux: &specs.Linux{Seccomp: c.seccomp}}
		if got := holdsPodNamespaces(spec); got != c.want {
			t.Errorf("%s: holdsPodNamespaces = %v, want %v", c.name, got, c.want)
		}
	}
}
