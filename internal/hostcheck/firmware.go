package hostcheck

import (
	"fmt"
	"path/filepath"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
)

// CheckFirmware reports which firmware the VMs boot.
const CheckFirmware = "firmware"

// checkFirmware says which firmware a sandbox's VM starts with this
// configuration (hypervisor.firmware, "auto" resolved) and, for qboot,
// whether QEMU's data directory next to the binary has it: QEMU fails at
// start for every pod without it.
func checkFirmware(e env, cfg *config.Config) Finding {
	f := Finding{Check: CheckFirmware}
	h := cfg.Hypervisor
	switch h.Machine {
	case config.MachineMicroVM:
		f.Detail = "microvm's own firmware (QEMU's microvm build of qboot)"
		return f
	case config.MachineVirt:
		f.Detail = "UEFI from hypervisor.pflashes"
		return f
	}
	fw := h.EffectiveFirmware(cfg.Devices)
	why := fmt.Sprintf("hypervisor.firmware = %q", h.Firmware)
	if h.Firmware == config.FirmwareAuto && fw == config.FirmwareSeaBIOS {
		why += ": the VM has PCI bridges or VFIO, which need SeaBIOS"
	}
	switch fw {
	case config.FirmwareSeaBIOS:
		f.Detail = "SeaBIOS, QEMU's default (" + why + ")"
	case config.FirmwareQboot:
		f.Detail = "qboot (" + why + ")"
		// QEMU looks -bios names up in <prefix>/share/qemu.
		rom := filepath.Join(filepath.Dir(filepath.Dir(h.Path)), "share", "qemu", qemu.QBootROM)
		if _, err := e.stat(rom); err != nil {
			f.Status = Warn
			f.Detail += "; " + rom + " is missing, and QEMU will not start unless its data directory is elsewhere and has it"
			f.Fix = `install qemu-system-data (Debian), or set hypervisor.firmware = "seabios"`
		}
	default:
		f.Detail = "the image " + fw + " (" + why + ")"
	}
	return f
}
