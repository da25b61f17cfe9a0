package agent

import (
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// checkSeccomp refuses a container's seccomp profile that the agent could
// not apply as written. The profile is applied by libcontainer (runc's
// init, just before exec), exactly as runc does on a host; a guest kernel
// exploit then needs a syscall the profile allows. A profile is never
// dropped: a container that asked for one and runs without it is the
// silent failure this check exists to prevent.
func checkSeccomp(p *specs.LinuxSeccomp) error {
	if p == nil {
		return nil
	}
	// A notify listener is a process on the machine that runs the
	// container, here the guest: a path from the host's spec means
	// nothing in the guest and runc would fail late, in its init.
	if p.ListenerPath != "" {
		return fmt.Errorf("linux.seccomp.listenerPath %q: seccomp notify listeners are not supported inside a Berth VM: %w", p.ListenerPath, errdefs.ErrNotImplemented)
	}
	for _, s := range p.Syscalls {
		if s.Action == specs.ActNotify {
			return fmt.Errorf("linux.seccomp: action SCMP_ACT_NOTIFY (syscalls %v) is not supported inside a Berth VM: %w", s.Names, errdefs.ErrNotImplemented)
		}
	}
	if !seccomp.Enabled {
		return fmt.Errorf("the container has a seccomp profile but this berth-agent was built without seccomp support: rebuild it with `make build` (build tag seccomp, needs libseccomp-dev) and the guest image with `berth guest build`: %w", errdefs.ErrNotImplemented)
	}
	return nil
}
