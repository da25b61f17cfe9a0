package config

// DefaultVMMUIDBase is the first uid of the range sandboxes' QEMUs run as
// (0x70000000): far above the uids of real users, system users and the
// usual subordinate-id ranges of user namespaces (100000 and up in
// /etc/subuid), so no file on the host belongs to them.
const DefaultVMMUIDBase = 0x70000000

// maxUID is the highest usable uid ((uid_t)-1 means "no change").
const maxUID = 1<<32 - 2

// VMMConfinement says how a sandbox's QEMU runs.
type VMMConfinement struct {
	// Unprivileged: QEMU runs as a uid of its own, without capabilities.
	Unprivileged bool
	// Why it runs as root, when it does.
	RootReason string
	// Seccomp: QEMU's -sandbox filter is on.
	Seccomp bool
}

// Confinement decides how QEMU is confined, given what the sandbox needs
// from the host: an unprivileged QEMU cannot open /dev/vhost-vsock or VFIO
// groups (root-only device nodes that Berth does not yet pass as
// descriptors), so those run QEMU as root, saying so. transport is the
// resolved agent transport ("vsock" or "virtio-serial"); vfio is true when
// the pod has VFIO groups to cold-plug.
func (c *Config) Confinement(transport string, vfio bool) VMMConfinement {
	v := VMMConfinement{Seccomp: c.Hypervisor.QEMUSandbox, Unprivileged: true}
	switch {
	case c.Hypervisor.RunAsRoot:
		v.RootReason = "hypervisor.run_as_root = true"
	case transport == TransportVsock:
		v.RootReason = "the vsock transport: QEMU opens /dev/vhost-vsock, which only root can"
	case vfio || c.Devices.HotPlugVFIO != PortNone:
		v.RootReason = "VFIO: QEMU opens /dev/vfio groups, which only root can"
	}
	if v.RootReason != "" {
		v.Unprivileged = false
	}
	return v
}
