package hostcheck

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
)

// CheckConfinement reports how sandboxes' QEMU processes are confined.
const CheckConfinement = "confinement"

// checkConfinement says what confinement QEMU gets with this configuration
// on this host (docs/security.md#qemu-confinement): its seccomp sandbox,
// and whether it runs as a uid of its own or as root, and why.
func checkConfinement(e env, cfg *config.Config) Finding {
	f := Finding{Check: CheckConfinement}
	transport := cfg.Agent.Transport
	if transport == config.TransportAuto {
		transport = config.TransportVirtioSerial
		if _, err := e.stat(vhostVsockDev); err == nil {
			transport = config.TransportVsock
		}
	}
	c := cfg.Confinement(transport, false)
	var parts []string
	if c.Seccomp {
		parts = append(parts, "QEMU under -sandbox "+qemu.SandboxOpts)
	} else {
		parts = append(parts, "QEMU without its seccomp sandbox (hypervisor.qemu_sandbox = false)")
	}
	if c.Unprivileged {
		parts = append(parts, fmt.Sprintf("as a uid of its own per sandbox (%d-%d), no capabilities",
			cfg.Hypervisor.VMMUIDBase, cfg.Hypervisor.VMMUIDBase+cfg.Hypervisor.VMMUIDCount-1))
	} else {
		parts = append(parts, "as root ("+c.RootReason+")")
	}
	f.Detail = strings.Join(parts, ", ")
	if c.Unprivileged {
		// The uid must be able to reach its sandbox under run_dir.
		for d := cfg.RunDir; ; d = filepath.Dir(d) {
			if fi, err := e.stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
				return fail(f, f.Detail+fmt.Sprintf("; but %s (mode %#o) is not searchable by others, so QEMU cannot reach its sockets", d, fi.Mode().Perm()),
					"chmod o+x "+d+", use another run_dir, or set hypervisor.run_as_root = true")
			}
			if d == "/" || d == "." {
				break
			}
		}
	}
	// Running as root for a device node is the configuration's need;
	// turning confinement off is a choice worth a warning.
	if !c.Seccomp || cfg.Hypervisor.RunAsRoot {
		f.Status = Warn
		f.Fix = "a QEMU bug is then closer to host root: see docs/security.md#qemu-confinement"
	}
	return f
}
