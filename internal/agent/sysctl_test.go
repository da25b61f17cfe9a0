package agent

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// containerd 2.x gives every pod net.ipv4.ip_unprivileged_port_start=0;
// libcontainer refuses it in the agent's network namespace, so the agent
// writes it there itself and leaves the rest to libcontainer.
func TestPodNetSysctlsAreAppliedByTheAgent(t *testing.T) {
	procSys := t.TempDir()
	os.MkdirAll(filepath.Join(procSys, "net/ipv4"), 0o755)
	spec := &specs.Spec{Linux: &specs.Linux{Sysctl: map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"kernel.shm_rmid_forced":              "1",
	}}}
	if err := applyPodNetSysctls(procSys, spec); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(procSys, "net/ipv4/ip_unprivileged_port_start")); string(b) != "0" {
		t.Errorf("net sysctl not written: %q", b)
	}
	if _, ok := spec.Linux.Sysctl["net.ipv4.ip_unprivileged_port_start"]; ok {
		t.Error("net sysctl left for libcontainer, which refuses it")
	}
	if spec.Linux.Sysctl["kernel.shm_rmid_forced"] != "1" {
		t.Error("other sysctls must stay for libcontainer")
	}
	for _, bad := range []string{"net.../../etc/passwd", "net..x", "net.a b"} {
		spec := &specs.Spec{Linux: &specs.Linux{Sysctl: map[string]string{bad: "1"}}}
		if err := applyPodNetSysctls(procSys, spec); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSharesAgentNetNS(t *testing.T) {
	own := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}
	joined := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/proc/self/ns/net"}}}}
	none := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}
	if sharesAgentNetNS(own) || !sharesAgentNetNS(joined) || !sharesAgentNetNS(none) {
		t.Errorf("own=%v joined=%v none=%v", sharesAgentNetNS(own), sharesAgentNetNS(joined), sharesAgentNetNS(none))
	}
}
