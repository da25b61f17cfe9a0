package hostcheck

import (
	"strings"
	"testing"
)

func TestCheckMemoryHotplug(t *testing.T) {
	good := map[string]string{"CONFIG_MEMORY_HOTPLUG": "y", "CONFIG_VIRTIO_MEM": "m", "CONFIG_ACPI_HOTPLUG_MEMORY": "y"}
	mods := []string{"kernel/drivers/virtio/virtio_mem.ko"}
	for _, tc := range []struct {
		name, mech string
		k          GuestKernel
		status     Status
		want       string
	}{
		{"virtio-mem ok", "virtio-mem", GuestKernel{Release: "6.1.0-56-cloud-amd64", Arch: "x86_64", Modules: mods, Config: good}, OK, "virtio_mem"},
		{"x86 kernel too old", "virtio-mem", GuestKernel{Release: "5.4.0-1", Arch: "x86_64", Modules: mods, Config: good}, Fail, ">= 5.8"},
		{"arm64 needs 5.16", "virtio-mem", GuestKernel{Release: "5.15.0", Arch: "arm64", Modules: mods, Config: good}, Fail, ">= 5.16"},
		{"module missing", "virtio-mem", GuestKernel{Release: "6.1.0", Arch: "x86_64", Config: good}, Fail, "no virtio_mem"},
		{"no hotplug in kernel", "dimm", GuestKernel{Release: "6.1.0", Arch: "x86_64", Config: map[string]string{}}, Fail, "CONFIG_MEMORY_HOTPLUG"},
		{"dimm ok", "dimm", GuestKernel{Release: "6.1.0", Arch: "x86_64", Config: good}, OK, "DIMM"},
		{"off", "none", GuestKernel{}, OK, "off"},
	} {
		f := checkMemoryHotplug(tc.mech, tc.k)
		if f.Status != tc.status || !strings.Contains(f.Detail, tc.want) {
			t.Errorf("%s: %v %q, want %v mentioning %q", tc.name, f.Status, f.Detail, tc.status, tc.want)
		}
	}
}

func TestParseKernelConfig(t *testing.T) {
	c := ParseKernelConfig(strings.NewReader("# comment\nCONFIG_MEMORY_HOTPLUG=y\nCONFIG_VIRTIO_MEM=m\nCONFIG_LOCALVERSION=\"-x\"\n# CONFIG_FOO is not set\n"))
	if c["CONFIG_MEMORY_HOTPLUG"] != "y" || c["CONFIG_VIRTIO_MEM"] != "m" || c["CONFIG_LOCALVERSION"] != "-x" || c["CONFIG_FOO"] != "" {
		t.Fatalf("%v", c)
	}
}
