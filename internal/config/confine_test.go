package config

import "testing"

func TestConfinement(t *testing.T) {
	for _, tc := range []struct {
		name      string
		edit      func(c *Config)
		transport string
		vfio      bool
		unpriv    bool
	}{
		{"default", func(*Config) {}, TransportVirtioSerial, false, true},
		{"run_as_root", func(c *Config) { c.Hypervisor.RunAsRoot = true }, TransportVirtioSerial, false, false},
		{"vsock", func(*Config) {}, TransportVsock, false, false},
		{"cold-plugged vfio", func(*Config) {}, TransportVirtioSerial, true, false},
		{"hot-plug vfio", func(c *Config) { c.Devices.HotPlugVFIO = PortRoot }, TransportVirtioSerial, false, false},
	} {
		c := Default()
		tc.edit(c)
		got := c.Confinement(tc.transport, tc.vfio)
		if got.Unprivileged != tc.unpriv || got.Unprivileged == (got.RootReason != "") || !got.Seccomp {
			t.Errorf("%s: %+v, want unprivileged %v with a reason exactly when root, seccomp on", tc.name, got, tc.unpriv)
		}
	}
}
