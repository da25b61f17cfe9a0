// Package device is Berth's typed device model: the block devices and VFIO
// groups a container asks for, the PCIe topology a VM is booted with so
// that devices can be plugged in later (root ports, a PCI bridge, a PCIe
// switch), where each device is placed in it, and the rule that a
// container's devices are the union of its cold-plugged and hot-plugged
// devices.
//
// That rule is the point of the package. Seed 002's bug was a runtime that
// chose one list or the other: with VFIO cold-plug configured, the
// container got the cold-plugged list (empty) and its hot-plugged block
// device was silently dropped ("Could not open /dev/xda: No such device or
// address"). Here Attach returns the union, in a stable order, and fails
// with ErrDropped if any requested device would be missing from it.
//
// The package knows PCI topology (slots, buses, guest PCI paths) but not
// QEMU's flag or QMP syntax: internal/sandbox turns a Topology into a
// qemu.Machine and implements the hot-plug interfaces over QMP.
package device

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// PortType is where a VFIO device is plugged: the values of the
// cold_plug_vfio and hot_plug_vfio configuration keys.
type PortType string

const (
	// NoPort disables that kind of plugging.
	NoPort PortType = "no-port"
	// RootPort plugs each device into its own PCIe root port.
	RootPort PortType = "root-port"
	// BridgePort plugs devices into slots of a PCIe-to-PCI bridge.
	BridgePort PortType = "bridge-port"
	// SwitchPort plugs devices into downstream ports of a PCIe switch.
	SwitchPort PortType = "switch-port"
)

// PortTypes lists every PortType, for validation and tests.
var PortTypes = []PortType{NoPort, RootPort, BridgePort, SwitchPort}

// VFIOMode says how the guest uses a passed-through device: the values of
// the vfio_mode configuration key.
type VFIOMode string

const (
	// ModeVFIO binds the device to vfio-pci inside the guest and gives the
	// container its /dev/vfio/<group> node, as runc would on a host.
	ModeVFIO VFIOMode = "vfio"
	// ModeGuestKernel leaves the device to its own driver in the guest
	// kernel; the container uses the nodes that driver creates, and no
	// /dev/vfio node is handed to it.
	ModeGuestKernel VFIOMode = "guest-kernel"
)

// VFIOModes lists every VFIOMode.
var VFIOModes = []VFIOMode{ModeVFIO, ModeGuestKernel}

// Errors callers classify with errors.Is.
var (
	// ErrInvalid: the request or configuration cannot work (bad spec
	// entry, missing IOMMU group, plugging disabled).
	ErrInvalid = errors.New("invalid device request")
	// ErrNoPort: every port of the needed kind is in use.
	ErrNoPort = errors.New("no free hot-plug port")
	// ErrDropped: a requested device is missing from the list a container
	// would receive. It means a bug in Berth, never a user error, and
	// stops the container from starting without its device.
	ErrDropped = errors.New("device dropped")
)

// Block is a host block device handed to a container as a virtio-blk disk.
type Block struct {
	// HostPath is the host's device node, e.g. /dev/loop3.
	HostPath string
	// HostMajor and HostMinor identify the host device; the spec's
	// cgroup rules name it by them, and the guest rewrites them.
	HostMajor, HostMinor int64
	// ContainerPath is where the container sees the node (linux.devices
	// path), e.g. /dev/xda. Empty for a mount.
	ContainerPath string
	// MountIndex is the index in the spec's mounts of the mount whose
	// source is this device, or -1 for a linux.devices entry.
	MountIndex int
	ReadOnly   bool
}

// Key identifies the request within one container.
func (b Block) Key() string {
	if b.MountIndex >= 0 {
		return "mount:" + strconv.Itoa(b.MountIndex)
	}
	return "dev:" + b.ContainerPath
}

// PCIAddress is a host PCI function in domain:bus:slot.function form, as
// in /sys/bus/pci/devices, e.g. 0000:01:00.0.
type PCIAddress string

var bdfRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// Valid reports whether a is a well-formed, lower-case address.
func (a PCIAddress) Valid() bool { return bdfRE.MatchString(string(a)) }

// VFIOGroup is an IOMMU group passed through to a container: every
// function of the group goes into the VM, since a group is the unit the
// host IOMMU isolates.
type VFIOGroup struct {
	// Group is the host IOMMU group number (the name of /dev/vfio/<g>).
	Group string
	// ContainerPath is the spec's path for the group node,
	// /dev/vfio/<g> unless the spec renamed it.
	ContainerPath string
	// HostMajor and HostMinor are the group node's numbers on the host.
	HostMajor, HostMinor int64
	// Functions are the group's PCI functions, sorted.
	Functions []PCIAddress
}

// Request is what one container asks for, in spec order within each kind.
type Request struct {
	Blocks []Block
	VFIO   []VFIOGroup
}

// Empty reports whether nothing is requested.
func (r Request) Empty() bool { return len(r.Blocks) == 0 && len(r.VFIO) == 0 }

// PCISlot is one hop of a guest PCI path: a device (slot) number on a bus;
// the function is always 0 for the devices Berth places.
type PCISlot uint8

// PCIPath is how the guest finds a device without guessing its name: the
// slot on the root bus, then the slot on each bus behind a bridge, down to
// the device. "10/00" is the device in the root port at 00:10.0.
type PCIPath []PCISlot

func (p PCIPath) String() string {
	parts := make([]string, len(p))
	for i, s := range p {
		parts[i] = fmt.Sprintf("%02x", uint8(s))
	}
	return strings.Join(parts, "/")
}

// ParsePCIPath parses the String form.
func ParsePCIPath(s string) (PCIPath, error) {
	if s == "" {
		return nil, fmt.Errorf("empty PCI path: %w", ErrInvalid)
	}
	var p PCIPath
	for _, part := range strings.Split(s, "/") {
		v, err := strconv.ParseUint(part, 16, 8)
		if err != nil || len(part) != 2 || v > 0x1f {
			return nil, fmt.Errorf("PCI path %q: bad slot %q: %w", s, part, ErrInvalid)
		}
		p = append(p, PCISlot(v))
	}
	return p, nil
}

// Plug says how a device got into the VM.
type Plug string

const (
	Cold Plug = "cold" // on the command line, at boot
	Hot  Plug = "hot"  // over QMP, after boot
)

// BlockAttachment is a block device placed in the VM.
type BlockAttachment struct {
	// ID is the device's ID in the VMM; unique in the sandbox.
	ID    string
	Block Block
	Port  Port
	Plug  Plug
}

// VFIOAttachment is one function of a VFIO group placed in the VM.
type VFIOAttachment struct {
	ID       string
	Group    VFIOGroup
	Function PCIAddress
	Port     Port
	Plug     Plug
	Mode     VFIOMode
}

// Devices is what a container receives: every block device and every VFIO
// function it asked for, each with where the guest finds it.
type Devices struct {
	Blocks []BlockAttachment
	VFIO   []VFIOAttachment
}

// Len counts the attachments.
func (d Devices) Len() int { return len(d.Blocks) + len(d.VFIO) }

// Union is the rule of this package: a container's devices are its
// cold-plugged devices and its hot-plugged devices, both, never one list
// instead of the other. The result is ordered by req (spec order), so it
// does not depend on which devices happened to be plugged at boot. A device
// present in both lists (which Attach never produces) is kept once, the
// cold-plugged copy winning. Requested devices found in neither list are
// left out here and reported by Verify.
func Union(req Request, cold, hot Devices) Devices {
	var out Devices
	blocks := map[string]BlockAttachment{}
	for _, list := range [][]BlockAttachment{hot.Blocks, cold.Blocks} {
		for _, a := range list {
			blocks[a.Block.Key()] = a
		}
	}
	for _, b := range req.Blocks {
		if a, ok := blocks[b.Key()]; ok {
			out.Blocks = append(out.Blocks, a)
		}
	}
	fns := map[PCIAddress]VFIOAttachment{}
	for _, list := range [][]VFIOAttachment{hot.VFIO, cold.VFIO} {
		for _, a := range list {
			fns[a.Function] = a
		}
	}
	for _, g := range req.VFIO {
		for _, f := range g.Functions {
			if a, ok := fns[f]; ok {
				out.VFIO = append(out.VFIO, a)
			}
		}
	}
	return out
}

// Verify fails with ErrDropped naming every requested device that got is
// missing. It guards the container's start: better no container than one
// silently without its disk.
func Verify(req Request, got Devices) error {
	have := map[string]bool{}
	for _, a := range got.Blocks {
		have[a.Block.Key()] = true
	}
	for _, a := range got.VFIO {
		have[string(a.Function)] = true
	}
	var missing []string
	for _, b := range req.Blocks {
		if !have[b.Key()] {
			missing = append(missing, fmt.Sprintf("block %s (%s)", b.HostPath, b.Key()))
		}
	}
	for _, g := range req.VFIO {
		for _, f := range g.Functions {
			if !have[string(f)] {
				missing = append(missing, fmt.Sprintf("VFIO group %s function %s", g.Group, f))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrDropped, strings.Join(missing, ", "))
	}
	return nil
}
