package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MaxMemoryMiB bounds hypervisor.default_memory and default_maxmemory.
// QEMU gives x86 guests 40 physical address bits unless told otherwise
// (TCG always; KVM without host-phys-bits), 1 TiB that the boot memory,
// the hot-plug region (maxmem, plus 1 GiB of alignment per slot) and the
// 64-bit PCI hole share: maxmem = 1 TiB fails at start with "phys-bits too
// low (40)"; measured on QEMU 7.2, about 967 GiB is the most that starts.
const MaxMemoryMiB = 512 << 10

// memoryBounds are the upper limits of the memory sizes.
func (c *Config) memoryBounds() []*KeyError {
	var errs []*KeyError
	h := &c.Hypervisor
	if h.DefaultMemoryMiB > MaxMemoryMiB {
		errs = append(errs, keyError("hypervisor.default_memory", h.DefaultMemoryMiB, fmt.Sprintf("is above %d (512 GiB)", MaxMemoryMiB),
			"the value is in MiB, not bytes or KiB: write 2048 for 2 GiB; a VM's address space (40 physical address bits in QEMU) holds no more"))
	}
	if h.DefaultMaxMemoryMiB > MaxMemoryMiB {
		errs = append(errs, keyError("hypervisor.default_maxmemory", h.DefaultMaxMemoryMiB, fmt.Sprintf("is above %d (512 GiB)", MaxMemoryMiB),
			"the value is in MiB; QEMU cannot place a larger hot-plug region in the VM's 40-bit address space (\"phys-bits too low\")"))
	}
	return errs
}

// hostMemoryProblems compares the boot size with the host's RAM: QEMU
// allocates the boot memory up front and fails with "cannot set up guest
// memory 'pc.ram': Cannot allocate memory" when the host has less.
func (c *Config) hostMemoryProblems(h Host) []*KeyError {
	if h.MemTotalMiB <= 0 || c.Hypervisor.DefaultMemoryMiB <= h.MemTotalMiB {
		return nil
	}
	return []*KeyError{keyError("hypervisor.default_memory", c.Hypervisor.DefaultMemoryMiB,
		fmt.Sprintf("is more than this host's %d MiB of RAM", h.MemTotalMiB),
		"the value is in MiB and is the memory every VM boots with; use a small boot size such as 256 and let containers' limits grow the VM up to default_maxmemory")}
}

// binaryMachines are the machine types each QEMU system emulator runs,
// by the architecture in its name (qemu-system-<arch>).
var binaryMachines = map[string][]string{
	"x86_64":  {MachineQ35, MachineMicroVM},
	"i386":    {MachineQ35, MachineMicroVM},
	"aarch64": {MachineVirt},
	"arm":     {MachineVirt},
}

// machineMatchesBinary checks hypervisor.machine against the emulator's
// architecture: QEMU's x86 binary has no "virt" machine (and the arm one
// no q35), which QEMU only says at start. A binary whose name does not
// tell its architecture (a wrapper) is not judged.
func (c *Config) machineMatchesBinary() *KeyError {
	h := &c.Hypervisor
	arch, ok := strings.CutPrefix(filepath.Base(h.Path), "qemu-system-")
	machines, known := binaryMachines[arch]
	if !ok || !known {
		return nil
	}
	for _, m := range machines {
		if m == h.Machine {
			return nil
		}
	}
	if oneOf("hypervisor.machine", h.Machine, MachineQ35, MachineMicroVM, MachineVirt) != nil {
		return nil // reported as unsupported already
	}
	fix := fmt.Sprintf("use %s with %s", quotedList(machines), h.Path)
	if arch == "x86_64" || arch == "i386" {
		fix += `, or set hypervisor.path = "/usr/bin/qemu-system-aarch64" for "virt"`
	} else {
		fix += `, or set hypervisor.path = "/usr/bin/qemu-system-x86_64" for "q35" or "microvm"`
	}
	return keyError("hypervisor.machine", h.Machine, fmt.Sprintf("is not a machine of %s (a %s emulator)", filepath.Base(h.Path), arch), fix)
}

// pflashesExist checks that the firmware images can be read: QEMU would
// fail at start, for every pod.
func (c *Config) pflashesExist() []*KeyError {
	var errs []*KeyError
	for _, p := range c.Hypervisor.Pflashes {
		if !filepath.IsAbs(p) {
			continue // reported as not absolute
		}
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			errs = append(errs, keyError("hypervisor.pflashes", p, "does not exist or is not a file",
				"install the firmware package (qemu-efi-aarch64 for AAVMF) or correct the path"))
		}
	}
	return errs
}

// wholeNumber parses an annotation's integer, with an error that says what
// is expected instead of strconv's "parsing ...: invalid syntax".
func wholeNumber(v, unit string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("is not a whole number%s; write digits only, such as \"512\"", unit)
	}
	return n, nil
}
