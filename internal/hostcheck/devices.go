package hostcheck

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-runtime/berth/internal/config"
)

// CheckDevices names the device hot-plug and VFIO requirements: a guest
// kernel that handles PCIe hot-plug and has virtio_blk, and, when VFIO is
// configured, a host IOMMU and vfio-pci.
const CheckDevices = "devices"

// checkDevices looks at what disk hot-plug and VFIO passthrough need. k is
// nil when the guest image could not be read.
func checkDevices(e env, cfg *config.Config, k *GuestKernel) Finding {
	f := Finding{Check: CheckDevices}
	d := cfg.Devices
	vfio := d.ColdPlugVFIO != config.PortNone || d.HotPlugVFIO != config.PortNone
	if cfg.Hypervisor.Machine != config.MachineQ35 {
		f.Detail = fmt.Sprintf("no device hot-plug on machine %q: containers cannot be given disks or VFIO devices", cfg.Hypervisor.Machine)
		return f
	}
	var parts []string
	if k != nil {
		if k.Config["CONFIG_HOTPLUG_PCI_PCIE"] != "y" && k.Config["CONFIG_HOTPLUG_PCI_ACPI"] != "y" {
			return fail(f, fmt.Sprintf("guest kernel %s has neither CONFIG_HOTPLUG_PCI_PCIE nor CONFIG_HOTPLUG_PCI_ACPI built in: hot-plugged disks would never appear", k.Release),
				"use a guest kernel with PCIe hot-plug (guest.kernel_package; Debian's cloud kernel has it)")
		}
		if k.Config["CONFIG_VIRTIO_BLK"] != "y" && !slices.ContainsFunc(k.Modules, func(m string) bool { return strings.TrimSuffix(filepath.Base(m), ".ko") == "virtio_blk" }) {
			return fail(f, "the guest image has no virtio_blk driver (neither built in nor in the initramfs)",
				"rebuild the guest image with `berth guest build --force`")
		}
		parts = append(parts, fmt.Sprintf("guest kernel %s hot-plugs PCIe and has virtio_blk", k.Release))
	}
	parts = append(parts, fmt.Sprintf("%d root ports, %d bridges, %d switch ports for hot-plug", d.PCIeRootPort, d.PCIBridges, d.PCIeSwitchPort))
	if !vfio {
		f.Detail = strings.Join(append(parts, "VFIO off (cold_plug_vfio and hot_plug_vfio are \"no-port\")"), "; ")
		return f
	}
	// Group numbers start at 0 on every IOMMU driver.
	if _, err := e.stat("/sys/kernel/iommu_groups/0"); err != nil {
		return fail(f, "VFIO is configured (devices.cold_plug_vfio / hot_plug_vfio) but the host has no IOMMU groups",
			"enable the IOMMU in firmware and on the host kernel command line (intel_iommu=on or amd_iommu=on), or set both keys to \"no-port\"")
	}
	if _, err := e.stat("/sys/bus/pci/drivers/vfio-pci"); err != nil {
		f.Status = Warn
		f.Detail = strings.Join(append(parts, "the host has IOMMU groups but the vfio-pci driver is not loaded"), "; ")
		f.Fix = "modprobe vfio-pci, and bind the devices to pass through to it"
		return f
	}
	f.Detail = strings.Join(append(parts, "IOMMU groups present, vfio-pci loaded"), "; ")
	return f
}
