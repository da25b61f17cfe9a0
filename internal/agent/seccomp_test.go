package agent

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCheckSeccomp(t *testing.T) {
	if err := checkSeccomp(nil); err != nil {
		t.Fatalf("no profile: %v", err)
	}
	for name, p := range map[string]*specs.LinuxSeccomp{
		"listener": {DefaultAction: specs.ActAllow, ListenerPath: "/run/seccomp-agent.sock"},
		"notify":   {DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"mount"}, Action: specs.ActNotify}}},
	} {
		if err := checkSeccomp(p); !errdefs.IsNotImplemented(err) {
			t.Errorf("%s: err %v, want NotImplemented", name, err)
		}
	}
	plain := &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"mkdir"}, Action: specs.ActErrno}}}
	err := checkSeccomp(plain)
	if !seccomp.Enabled {
		// `go test` builds without the seccomp tag: the agent must
		// refuse, naming the fix, rather than run the container bare.
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "make build") {
			t.Fatalf("agent without seccomp support: err %v, want NotImplemented naming the fix", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("plain profile: %v", err)
	}
}
