package hostcheck

import (
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/config"
)

// TestCheckFirmwareSaysWhatBoots: berth check names the firmware in
// effect, why SeaBIOS when auto falls back to it, and warns when qboot's
// image is not where QEMU looks.
func TestCheckFirmwareSaysWhatBoots(t *testing.T) {
	h := goodHost()
	cfg := loadedDefaults(t)
	if f := checkFirmware(h.env(), cfg); f.Status != OK || !strings.HasPrefix(f.Detail, "qboot (hypervisor.firmware = \"auto\")") {
		t.Errorf("default: %v %s", f.Status, f.Detail)
	}
	cfg.Devices.PCIBridges = 1
	if f := checkFirmware(h.env(), cfg); f.Status != OK || !strings.Contains(f.Detail, "SeaBIOS") || !strings.Contains(f.Detail, "PCI bridges") {
		t.Errorf("bridges: %v %s", f.Status, f.Detail)
	}
	cfg.Devices.PCIBridges = 0
	delete(h.files, "/usr/share/qemu/qboot.rom")
	if f := checkFirmware(h.env(), cfg); f.Status != Warn || !strings.Contains(f.Detail, "/usr/share/qemu/qboot.rom is missing") || !strings.Contains(f.Fix, `firmware = "seabios"`) {
		t.Errorf("qboot missing: %v %s — %s", f.Status, f.Detail, f.Fix)
	}
	cfg.Hypervisor.Firmware = config.FirmwareSeaBIOS
	if f := checkFirmware(h.env(), cfg); f.Status != OK || !strings.HasPrefix(f.Detail, "SeaBIOS") {
		t.Errorf("seabios: %v %s", f.Status, f.Detail)
	}
}
