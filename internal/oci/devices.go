package oci

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// AddDevice gives a container a device node, as containerd's
// oci.WithLinuxDevice and Docker's --device do: a linux.devices entry and a
// device cgroup rule allowing access ("rwm" or a subset) to its numbers.
// The numbers are the host's; Berth maps them to the guest's devices.
func AddDevice(spec *specs.Spec, d specs.LinuxDevice, access string) {
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	spec.Linux.Devices = append(spec.Linux.Devices, d)
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{}
	}
	major, minor := d.Major, d.Minor
	spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices,
		specs.LinuxDeviceCgroup{Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: access})
}
