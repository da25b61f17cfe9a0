package hostcheck

import (
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/guest"
)

// fullKernelConfig has every option guest.KernelFeatures looks for.
func fullKernelConfig() map[string]string {
	c := map[string]string{}
	for _, f := range guest.KernelFeatures {
		for _, o := range f.Options {
			c[o] = "y"
		}
	}
	return c
}

func TestCheckGuestKernel(t *testing.T) {
	without := func(opts ...string) map[string]string {
		c := fullKernelConfig()
		for _, o := range opts {
			delete(c, o)
		}
		return c
	}
	modular := fullKernelConfig()
	modular["CONFIG_VIRTIO_FS"] = "m"
	for _, tc := range []struct {
		name   string
		source string // guest.kernel_source
		k      GuestKernel
		status Status
		want   []string
	}{
		{"berth kernel, everything", "berth", GuestKernel{Release: "6.1.192-berth", Source: "berth", Package: "linux-source-6.1 6.1.192-3", Config: fullKernelConfig()},
			OK, []string{"6.1.192-berth", "berth kernel from linux-source-6.1", "all"}},
		{"modules count", "debian", GuestKernel{Release: "6.1.0-57-cloud-amd64", Source: "debian", Config: modular}, OK, []string{"all"}},
		{"required missing", "debian", GuestKernel{Release: "x", Source: "debian", Config: without("CONFIG_VIRTIO_FS", "CONFIG_SECCOMP_FILTER")},
			Fail, []string{"virtio-fs (CONFIG_VIRTIO_FS)", "seccomp filters (CONFIG_SECCOMP_FILTER)"}},
		{"optional missing", "debian", GuestKernel{Release: "x", Source: "debian", Config: without("CONFIG_BRIDGE")},
			Warn, []string{"bridge, veth, tun (CONFIG_BRIDGE)"}},
		{"image from the other source", "berth", GuestKernel{Release: "x", Source: "debian", Config: fullKernelConfig()},
			Warn, []string{`guest.kernel_source is "berth" but the image holds the debian kernel`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Guest.KernelSource = tc.source
			f := checkGuestKernel(cfg, tc.k)
			if f.Status != tc.status {
				t.Errorf("status %v, want %v: %s", f.Status, tc.status, f.Detail)
			}
			for _, w := range tc.want {
				if !strings.Contains(f.Detail, w) {
					t.Errorf("detail %q lacks %q", f.Detail, w)
				}
			}
			if f.Status != OK && f.Fix == "" {
				t.Error("no fix given")
			}
		})
	}
}
