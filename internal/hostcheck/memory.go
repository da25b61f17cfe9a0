package hostcheck

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/guest"
)

// CheckMemoryHotplug names the guest-kernel requirements of memory
// hot-plug (seed 004's troubleshooting list: is virtio_mem there, is hot-plug
// built in, who onlines the memory).
const CheckMemoryHotplug = "memory hotplug"

// virtioMemMinKernel is the first Linux with virtio-mem per architecture.
var virtioMemMinKernel = map[string][2]int{"x86_64": {5, 8}, "arm64": {5, 16}}

// GuestKernel is what the check needs to know about the guest image.
type GuestKernel struct {
	Release string   // uname -r, e.g. 6.1.0-56-cloud-amd64
	Arch    string   // x86_64 or arm64
	Modules []string // module paths packed in the initramfs
	Config  map[string]string
	// Source is guest.KernelSourceDebian or guest.KernelSourceBerth, and
	// Package the package (and version) the kernel came from.
	Source  string
	Package string
}

// checkMemoryHotplug decides whether the configured mechanism can work
// with the guest kernel.
func checkMemoryHotplug(mechanism string, k GuestKernel) Finding {
	f := Finding{Check: CheckMemoryHotplug}
	if mechanism == config.MemoryHotplugNone {
		f.Detail = "off (hypervisor.memory_hotplug = \"none\"): sandboxes keep their boot memory"
		return f
	}
	if k.Config["CONFIG_MEMORY_HOTPLUG"] != "y" {
		return fail(f, fmt.Sprintf("guest kernel %s is built without CONFIG_MEMORY_HOTPLUG", k.Release),
			`use a guest kernel with memory hot-plug (guest.kernel_package), or set hypervisor.memory_hotplug = "none"`)
	}
	switch mechanism {
	case config.MemoryHotplugVirtioMem:
		minV := virtioMemMinKernel[k.Arch]
		if maj, minr, ok := kernelVersion(k.Release); ok && (maj < minV[0] || maj == minV[0] && minr < minV[1]) {
			return fail(f, fmt.Sprintf("virtio-mem needs Linux >= %d.%d on %s; the guest kernel is %s", minV[0], minV[1], k.Arch, k.Release),
				`use a newer guest kernel, or set hypervisor.memory_hotplug = "dimm"`)
		}
		if k.Config["CONFIG_VIRTIO_MEM"] != "y" && !slices.ContainsFunc(k.Modules, func(m string) bool { return strings.TrimSuffix(filepath.Base(m), ".ko") == "virtio_mem" }) {
			return fail(f, "the guest image has no virtio_mem driver (neither built in nor in the initramfs)",
				"rebuild the guest image with `berth guest build --force`")
		}
		f.Detail = fmt.Sprintf("virtio-mem, 2 MiB blocks; guest kernel %s has virtio_mem; berth-agent onlines hot-added blocks itself (movable)", k.Release)
	case config.MemoryHotplugDIMM:
		if k.Arch == "x86_64" && k.Config["CONFIG_ACPI_HOTPLUG_MEMORY"] != "y" {
			return fail(f, "the guest kernel lacks CONFIG_ACPI_HOTPLUG_MEMORY, which DIMM hot-plug needs",
				`set hypervisor.memory_hotplug = "virtio-mem"`)
		}
		f.Detail = fmt.Sprintf("ACPI DIMMs (128 MiB aligned); guest kernel %s; berth-agent onlines hot-added blocks itself (movable)", k.Release)
	}
	return f
}

// kernelVersion parses "6.1.0-56-cloud-amd64" into 6, 1.
func kernelVersion(release string) (int, int, bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	minr, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return maj, minr, err1 == nil && err2 == nil
}

// ParseKernelConfig reads a kernel .config.
func ParseKernelConfig(r io.Reader) map[string]string { return guest.ParseKernelConfig(r) }

// guestKernel reads the guest image manifest and kernel config next to
// the configured kernel.
func guestKernel(cfg *config.Config) (GuestKernel, error) {
	a, err := guest.Inspect(filepath.Dir(cfg.ResolvedKernel()))
	if err != nil {
		return GuestKernel{}, err
	}
	k := GuestKernel{Release: a.KernelVersion, Modules: a.Modules, Arch: "x86_64",
		Source: a.Source(), Package: a.KernelPackage + " " + a.KernelPackageVersion}
	if strings.Contains(a.KernelVersion, "arm64") {
		k.Arch = "arm64"
	}
	f, err := os.Open(a.Config)
	if err != nil {
		return k, err
	}
	defer f.Close()
	k.Config = ParseKernelConfig(f)
	return k, nil
}
