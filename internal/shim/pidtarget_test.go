package shim

import (
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// guestPid is a guest process with a given pid.
type guestPid struct {
	fakeProc
	pid uint32
}

func (p *guestPid) Pid() uint32 { return p.pid }

// TestDebugContainerTargetsThePodsOneOwnPIDNamespace: a container that
// joins a PID namespace by path joins the sandbox's in a pod that shares
// one, the one running container with its own otherwise, and is refused
// when several could be meant.
func TestDebugContainerTargetsThePodsOneOwnPIDNamespace(t *testing.T) {
	byPath := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/99/ns/pid"}}}}
	own := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}
	running := func(id string, pid uint32, ownNS bool) *container {
		return &container{id: id, ownPIDNS: ownNS, init: newProcess(id, "", stdioPaths{}, nil, &guestPid{pid: pid})}
	}
	s := &service{containers: map[string]*container{
		"pod":    {id: "pod", podSandbox: true, ownPIDNS: true, init: newProcess("pod", "", stdioPaths{}, nil, &guestPid{pid: 2})},
		"shared": running("shared", 5, false),
	}}
	if pid, err := s.pidNamespaceTarget("dbg", false, byPath); pid != 0 || err != nil {
		t.Errorf("pod sharing one PID namespace: %d, %v; want the sandbox's (0)", pid, err)
	}
	if pid, err := s.pidNamespaceTarget("app2", false, own); pid != 0 || err != nil {
		t.Errorf("a container with its own namespace: %d, %v", pid, err)
	}
	s.containers["app"] = running("app", 31, true)
	gone := running("gone", 40, true)
	gone.init.setExited(0, time.Now())
	s.containers["gone"] = gone
	if pid, err := s.pidNamespaceTarget("dbg", false, byPath); pid != 31 || err != nil {
		t.Errorf("one running app container with its own namespace: %d, %v; want its pid 31", pid, err)
	}
	s.containers["app2"] = running("app2", 32, true)
	_, err := s.pidNamespaceTarget("dbg", false, byPath)
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "kubectl debug --target") {
		t.Errorf("two candidate targets: %v", err)
	}
}
