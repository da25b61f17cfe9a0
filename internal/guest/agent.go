package guest

import (
	"debug/elf"
	"fmt"
	"os"
)

// debianArchMachine maps a Debian architecture to the ELF machine of
// binaries that run on it.
var debianArchMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// checkAgent makes sure the agent can run as /init of a kernel for arch
// ("amd64"): an ELF executable for that machine with no program interpreter.
// Anything else fails only once the VM boots, as a kernel panic ("No working
// init found") on the guest console, which is far harder to trace back.
func checkAgent(file, arch string) error {
	f, err := elf.Open(file)
	if err != nil {
		if os.IsNotExist(err) {
			return fmt.Errorf("agent binary %s: %w", file, err)
		}
		return fmt.Errorf("agent binary %s is not an ELF executable: %w", file, err)
	}
	defer f.Close()
	if want, ok := debianArchMachine[arch]; ok && f.Machine != want {
		return fmt.Errorf("agent binary %s is built for %s but the guest kernel is %s: build it with GOARCH=%s", file, f.Machine, arch, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("agent binary %s is dynamically linked, but the guest has no C library to run it: build it with CGO_ENABLED=0 (make build does)", file)
		}
	}
	return nil
}
