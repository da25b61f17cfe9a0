package hostcheck

import (
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/config"
)

func TestCheckDevices(t *testing.T) {
	kernel := GuestKernel{Release: "6.1.0-56-cloud-amd64", Modules: []string{"virtio_blk"},
		Config: map[string]string{"CONFIG_HOTPLUG_PCI_PCIE": "y"}}
	vfio := func(c *config.Config) { c.Devices.HotPlugVFIO = config.PortRoot }
	for _, tc := range []struct {
		name   string
		edit   func(c *config.Config)
		kernel *GuestKernel
		files  []string
		want   Status
		detail string
	}{
		{"defaults", nil, &kernel, nil, OK, "VFIO off"},
		{"no guest image", nil, nil, nil, OK, "2 root ports"},
		{"microvm", func(c *config.Config) { c.Hypervisor.Machine = config.MachineMicroVM }, &kernel, nil, OK, "no device hot-plug"},
		{"no pcie hotplug", nil, &GuestKernel{Release: "x", Modules: kernel.Modules, Config: map[string]string{}}, nil, Fail, "CONFIG_HOTPLUG_PCI_PCIE"},
		{"no virtio_blk", nil, &GuestKernel{Release: "x", Config: kernel.Config}, nil, Fail, "no virtio_blk"},
		{"vfio without iommu", vfio, &kernel, nil, Fail, "no IOMMU groups"},
		{"vfio without vfio-pci", vfio, &kernel, []string{"/sys/kernel/iommu_groups/0"}, Warn, "vfio-pci driver is not loaded"},
		{"vfio ready", vfio, &kernel, []string{"/sys/kernel/iommu_groups/0", "/sys/bus/pci/drivers/vfio-pci"}, OK, "IOMMU groups present"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			if tc.edit != nil {
				tc.edit(cfg)
			}
			h := goodHost()
			for _, f := range tc.files {
				h.files[f] = fakeFile{dir: true}
			}
			f := checkDevices(h.env(), cfg, tc.kernel)
			if f.Status != tc.want || !strings.Contains(f.Detail, tc.detail) || (f.Status != OK && f.Fix == "") {
				t.Errorf("got %+v, want %v with %q and a fix unless ok", f, tc.want, tc.detail)
			}
		})
	}
}

func TestCheckNetwork(t *testing.T) {
	cfg := config.Default()
	h := goodHost()
	if f := checkNetwork(h.env(), cfg); f.Status != OK || !strings.Contains(f.Detail, "no /dev/vhost-net") {
		t.Errorf("with tun, without vhost-net: %+v", f)
	}
	delete(h.files, "/dev/net/tun")
	if f := checkNetwork(h.env(), cfg); f.Status != Warn || f.Fix != "modprobe tun" {
		t.Errorf("without tun: %+v", f)
	}
}
