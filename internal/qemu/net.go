package qemu

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

// NetDevice is a virtio-net NIC backed by a tap the caller already opened
// (in the pod's network namespace, which QEMU never enters). QEMU gets
// the descriptor as an inherited file (-netdev tap,fd=N); vhost-net is not
// used.
type NetDevice struct {
	ID string
	// Tap is the tap queue; Start passes it to QEMU, the caller keeps
	// ownership (and may close it once Start returned).
	Tap *os.File
	// MAC is the guest NIC's address: the pod interface's, so the guest
	// sends with the MAC CNI assigned.
	MAC net.HardwareAddr
	// MTU is offered to the guest driver (virtio-net host_mtu); 0 leaves
	// the guest's default (1500).
	MTU int
}

// maxNetMTU is the largest host_mtu QEMU accepts (a 64 KiB frame).
const maxNetMTU = 65535

// tapFD is the descriptor number QEMU sees for the i-th NIC's tap: taps
// follow the console pipe (ConsoleFD) when the console is capped, and
// start at 3 (the first of exec.Cmd's ExtraFiles) otherwise.
func (m Machine) tapFD(i int) int {
	if m.consoleCapped() {
		return ConsoleFD + 1 + i
	}
	return 3 + i
}

// extraFiles are the tap descriptors Start hands to QEMU after the console
// pipe, in the order Args numbers them.
func (m Machine) extraFiles() []*os.File {
	var files []*os.File
	for _, n := range m.NetDevices {
		files = append(files, n.Tap)
	}
	return files
}

func (m Machine) validateNet(bad func(field, format string, args ...any), checkID func(field, id string)) {
	for i, n := range m.NetDevices {
		f := fmt.Sprintf("NetDevices[%d]", i)
		checkID(f+".ID", n.ID)
		if n.Tap == nil {
			bad(f+".Tap", "nil; open the tap before starting the VM")
		}
		if len(n.MAC) != 6 {
			bad(f+".MAC", "%q is not an Ethernet address", n.MAC)
		} else if n.MAC[0]&1 != 0 {
			bad(f+".MAC", "%s is a multicast address", n.MAC)
		}
		if n.MTU < 0 || n.MTU > maxNetMTU || (n.MTU > 0 && n.MTU < 68) {
			bad(f+".MTU", "%d is out of range 68-%d (0 for the default)", n.MTU, maxNetMTU)
		}
	}
}

// netArgs adds a tap back end and a virtio-net device per NIC. The
// descriptor numbers follow extraFiles.
func (m Machine) netArgs(a *argv) {
	for i, n := range m.NetDevices {
		a.add("-netdev", "tap,id="+chardevPrefix+n.ID+",fd="+strconv.Itoa(m.tapFD(i)))
		dev := m.virtioDev("virtio-net") + ",id=" + n.ID + ",netdev=" + chardevPrefix + n.ID + ",mac=" + n.MAC.String()
		if n.MTU > 0 {
			dev += ",host_mtu=" + strconv.Itoa(n.MTU)
		}
		a.add("-device", dev)
	}
}
