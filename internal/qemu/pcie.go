package qemu

import (
	"fmt"
	"regexp"
	"strconv"
)

// PCIe topology on q35. Devices are hot-plugged into ports reserved at
// boot: q35's root bus (pcie.0) does not accept hot-plug, so every port a
// device may later go into must exist when QEMU starts.

// PCIeRootPort is a pcie-root-port on pcie.0 at Slot. Chassis must be
// unique among the machine's ports: PCIe hot-plug identifies a slot by its
// (chassis, slot) pair and QEMU refuses duplicates.
type PCIeRootPort struct {
	ID      string
	Slot    int
	Chassis int
}

// PCIBridge is a pcie-pci-bridge on pcie.0 at Slot; its secondary bus,
// named by ID, has conventional PCI slots 1 to 31.
type PCIBridge struct {
	ID   string
	Slot int
}

// PCIeSwitch is a root port at Slot holding a switch's upstream port
// (x3130-upstream), and the switch's downstream ports (xio3130-downstream)
// behind it.
type PCIeSwitch struct {
	RootPort   PCIeRootPort
	UpstreamID string
	Downstream []PCIeDownstreamPort
}

// PCIeDownstreamPort is one downstream port of a switch, at Slot on the
// upstream port's secondary bus.
type PCIeDownstreamPort struct {
	ID      string
	Slot    int
	Chassis int
}

// VFIODevice is a host PCI function passed through with vfio-pci, at Addr
// on Bus (a port's or a bridge's ID).
type VFIODevice struct {
	ID   string
	Host string // host address, e.g. 0000:01:00.0
	Bus  string
	Addr int
}

// BlockDevice is a virtio-blk disk hot-plugged at Addr on Bus. Path is a
// host block device node or a regular file.
type BlockDevice struct {
	ID       string
	Path     string
	ReadOnly bool
	Bus      string
	Addr     int
}

// nodeName is the block layer node behind a disk: QMP's blockdev-add
// names it, device_add refers to it and blockdev-del removes it.
func (b BlockDevice) nodeName() string { return "drive-" + b.ID }

// maxRootSlot is the last slot of pcie.0 free for ports: q35 puts its ICH9
// functions at 0x1f.
const maxRootSlot = 0x1e

var hostPCIRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// validatePCIe checks the topology fields of m; bad reports a problem.
func (m Machine) validatePCIe(bad func(field, format string, args ...any), checkID func(field, id string)) {
	if len(m.PCIeRootPorts)+len(m.PCIBridges)+len(m.PCIeSwitches)+len(m.VFIODevices) == 0 {
		return
	}
	if m.Type != Q35 {
		bad("Type", "PCIe ports and VFIO devices need machine %q, not %q", Q35, m.Type)
		return
	}
	slots := map[int]string{}
	chassis := map[int]string{}
	buses := map[string]bool{}
	useSlot := func(field string, s int) {
		if s < 1 || s > maxRootSlot {
			bad(field, "slot %#x is outside 0x01-%#x (0x00 is the host bridge, 0x1f the ICH9 functions)", s, maxRootSlot)
			return
		}
		if prev, ok := slots[s]; ok {
			bad(field, "slot %#x is also used by %s", s, prev)
		}
		slots[s] = field
	}
	useChassis := func(field string, c int) {
		if c < 1 || c > 255 {
			bad(field, "chassis %d is outside 1-255", c)
			return
		}
		if prev, ok := chassis[c]; ok {
			bad(field, "chassis %d is also used by %s", c, prev)
		}
		chassis[c] = field
	}
	for i, p := range m.PCIeRootPorts {
		f := fmt.Sprintf("PCIeRootPorts[%d]", i)
		checkID(f+".ID", p.ID)
		useSlot(f+".Slot", p.Slot)
		useChassis(f+".Chassis", p.Chassis)
		buses[p.ID] = true
	}
	for i, b := range m.PCIBridges {
		f := fmt.Sprintf("PCIBridges[%d]", i)
		checkID(f+".ID", b.ID)
		useSlot(f+".Slot", b.Slot)
		buses[b.ID] = true
	}
	for i, sw := range m.PCIeSwitches {
		f := fmt.Sprintf("PCIeSwitches[%d]", i)
		checkID(f+".RootPort.ID", sw.RootPort.ID)
		useSlot(f+".RootPort.Slot", sw.RootPort.Slot)
		useChassis(f+".RootPort.Chassis", sw.RootPort.Chassis)
		checkID(f+".UpstreamID", sw.UpstreamID)
		if len(sw.Downstream) == 0 {
			bad(f+".Downstream", "a switch needs at least one downstream port")
		}
		dslots := map[int]bool{}
		for j, d := range sw.Downstream {
			df := fmt.Sprintf("%s.Downstream[%d]", f, j)
			checkID(df+".ID", d.ID)
			if d.Slot < 0 || d.Slot > 31 || dslots[d.Slot] {
				bad(df+".Slot", "slot %d is outside 0-31 or used twice", d.Slot)
			}
			dslots[d.Slot] = true
			useChassis(df+".Chassis", d.Chassis)
			buses[d.ID] = true
		}
	}
	for i, v := range m.VFIODevices {
		f := fmt.Sprintf("VFIODevices[%d]", i)
		checkID(f+".ID", v.ID)
		if !hostPCIRE.MatchString(v.Host) {
			bad(f+".Host", "%q is not a host PCI address like 0000:01:00.0", v.Host)
		}
		if !buses[v.Bus] {
			bad(f+".Bus", "%q is not a port or bridge of this machine", v.Bus)
		}
		if v.Addr < 0 || v.Addr > 31 {
			bad(f+".Addr", "slot %d is outside 0-31", v.Addr)
		}
	}
}

// pcieArgs adds the topology and cold-plugged VFIO devices.
//
// io-reserve=0 on ports: by default each port reserves 4 KiB of the 64 KiB
// x86 I/O space, which firmware runs out of after about a dozen ports;
// virtio-pci (modern) needs no I/O BAR, and a hot-plugged device that
// does would fail on any port count anyway.
func (m Machine) pcieArgs(a *argv) {
	rootPort := func(p PCIeRootPort) {
		a.add("-device", "pcie-root-port,id="+p.ID+",bus=pcie.0,addr="+hexSlot(p.Slot)+
			",chassis="+strconv.Itoa(p.Chassis)+",io-reserve=0")
	}
	for _, p := range m.PCIeRootPorts {
		rootPort(p)
	}
	for _, b := range m.PCIBridges {
		a.add("-device", "pcie-pci-bridge,id="+b.ID+",bus=pcie.0,addr="+hexSlot(b.Slot))
	}
	for _, sw := range m.PCIeSwitches {
		rootPort(sw.RootPort)
		a.add("-device", "x3130-upstream,id="+sw.UpstreamID+",bus="+sw.RootPort.ID)
		for _, d := range sw.Downstream {
			a.add("-device", "xio3130-downstream,id="+d.ID+",bus="+sw.UpstreamID+",addr="+hexSlot(d.Slot)+
				",chassis="+strconv.Itoa(d.Chassis)+",slot=0")
		}
	}
	for _, v := range m.VFIODevices {
		a.add("-device", "vfio-pci,id="+v.ID+",host="+v.Host+",bus="+v.Bus+",addr="+hexSlot(v.Addr))
	}
}

func hexSlot(s int) string { return fmt.Sprintf("0x%02x", s) }
