package device

import (
	"fmt"
	"strconv"
)

// Config is the device part of Berth's configuration.
type Config struct {
	// RootPorts is how many empty PCIe root ports are reserved at boot for
	// hot-plug (pcie_root_port). Each hot-plugged device takes one.
	RootPorts int
	// Bridges is how many PCIe-to-PCI bridges are added at boot
	// (pci_bridges); each has BridgeSlots hot-plug slots.
	Bridges int
	// SwitchPorts is how many downstream ports the PCIe switch gets
	// (pcie_switch_port); 0 means no switch unless cold-plug needs one.
	SwitchPorts int
	// ColdPlugVFIO places VFIO devices known at boot (those of the
	// container that boots the VM); NoPort leaves them to hot-plug.
	ColdPlugVFIO PortType
	// HotPlugVFIO places VFIO devices asked for after boot; NoPort
	// refuses them.
	HotPlugVFIO PortType
	Mode        VFIOMode
}

// Limits of the layout. Ports sit on root-bus slots FirstRootSlot to
// LastRootSlot; the devices QEMU places on its own (virtio-serial,
// virtio-fs) take the low slots, and 0x1f holds q35's ICH9 functions.
const (
	FirstRootSlot PCISlot = 0x10
	LastRootSlot  PCISlot = 0x1e
	// RootSlots is how many root-bus slots ports can use.
	RootSlots = int(LastRootSlot-FirstRootSlot) + 1
	// BridgeSlots are the usable slots of a PCIe-to-PCI bridge: 1 to 31
	// (slot 0 stays empty, as QEMU reserves it on bridges with SHPC).
	BridgeSlots = 31
	// MaxSwitchPorts is the most downstream ports one switch can have:
	// one per slot of the upstream port's secondary bus.
	MaxSwitchPorts = 32
)

// RootPortDevice is a PCIe root port on the root bus.
type RootPortDevice struct {
	ID      string
	Slot    PCISlot
	Chassis int // unique per port: PCIe requires distinct chassis/slot pairs
}

// BridgeDevice is a PCIe-to-PCI bridge on the root bus.
type BridgeDevice struct {
	ID   string
	Slot PCISlot
}

// DownstreamPortDevice is one downstream port of the switch.
type DownstreamPortDevice struct {
	ID      string
	Slot    PCISlot // on the upstream port's secondary bus
	Chassis int
}

// SwitchDevice is a PCIe switch: a root port, the switch's upstream port
// in it, and downstream ports behind that.
type SwitchDevice struct {
	RootPort   RootPortDevice
	UpstreamID string
	Downstream []DownstreamPortDevice
}

// Port is one place a device can be plugged into.
type Port struct {
	Type PortType
	// Bus is the ID of the bus the device sits on: the root or
	// downstream port's ID, or the bridge's ID.
	Bus string
	// Addr is the device's slot on Bus (0 in a port, 1-31 on a bridge).
	Addr PCISlot
	// Path is where the guest finds the device.
	Path PCIPath
	// Hotplug is false for ports reserved for cold-plugged devices.
	Hotplug bool
}

// Topology is the PCIe layout a VM boots with.
type Topology struct {
	RootPorts []RootPortDevice
	Bridges   []BridgeDevice
	Switch    *SwitchDevice
	// Ports lists every place for a device: hot-plug ports in the order
	// they are handed out (root ports, then switch ports, then bridge
	// slots), and the ports of cold-plugged devices.
	Ports []Port
}

// Plan lays out the VM's topology from cfg and places the VFIO groups
// known at boot (cold) when cold-plug is on. With cold-plug off it returns
// no cold devices: they are then hot-plugged by Attach like any other.
func Plan(cfg Config, cold []VFIOGroup) (Topology, Devices, error) {
	var t Topology
	var placed Devices
	if cfg.ColdPlugVFIO == "" {
		cfg.ColdPlugVFIO = NoPort
	}
	var fns []VFIOAttachment
	if cfg.ColdPlugVFIO != NoPort {
		for _, g := range cold {
			for _, f := range g.Functions {
				fns = append(fns, VFIOAttachment{ID: "vfio" + strconv.Itoa(len(fns)), Group: g, Function: f, Plug: Cold, Mode: cfg.Mode})
			}
		}
	}
	nCold := len(fns)

	slot := FirstRootSlot
	chassis := 1
	takeSlot := func(what string) (PCISlot, error) {
		if slot > LastRootSlot {
			return 0, fmt.Errorf("%s: the root bus has no free slot (Berth uses %d: pcie_root_port + pci_bridges + one for a switch + one per cold-plugged VFIO function on root-port): %w",
				what, RootSlots, ErrInvalid)
		}
		s := slot
		slot++
		return s, nil
	}
	newRootPort := func(id string) (RootPortDevice, error) {
		s, err := takeSlot("root port " + id)
		if err != nil {
			return RootPortDevice{}, err
		}
		rp := RootPortDevice{ID: id, Slot: s, Chassis: chassis}
		chassis++
		return rp, nil
	}

	// Cold-plugged root ports first: a device present at boot gets the
	// same guest address whatever the hot-plug settings are.
	coldPorts := make([]Port, 0, nCold)
	if cfg.ColdPlugVFIO == RootPort {
		for i := range fns {
			rp, err := newRootPort("rpc" + strconv.Itoa(i))
			if err != nil {
				return Topology{}, Devices{}, err
			}
			t.RootPorts = append(t.RootPorts, rp)
			coldPorts = append(coldPorts, Port{Type: RootPort, Bus: rp.ID, Path: PCIPath{rp.Slot, 0}})
		}
	}
	var hotRoot []Port
	for i := 0; i < cfg.RootPorts; i++ {
		rp, err := newRootPort("rp" + strconv.Itoa(i))
		if err != nil {
			return Topology{}, Devices{}, err
		}
		t.RootPorts = append(t.RootPorts, rp)
		hotRoot = append(hotRoot, Port{Type: RootPort, Bus: rp.ID, Path: PCIPath{rp.Slot, 0}, Hotplug: true})
	}

	var hotSwitch []Port
	nDown := cfg.SwitchPorts
	if cfg.ColdPlugVFIO == SwitchPort {
		nDown += nCold
	}
	if nDown > MaxSwitchPorts {
		return Topology{}, Devices{}, fmt.Errorf("the switch would need %d downstream ports (pcie_switch_port + cold-plugged VFIO functions); at most %d fit: %w", nDown, MaxSwitchPorts, ErrInvalid)
	}
	if nDown > 0 {
		rp, err := newRootPort("swrp0")
		if err != nil {
			return Topology{}, Devices{}, err
		}
		sw := &SwitchDevice{RootPort: rp, UpstreamID: "swup0"}
		for i := 0; i < nDown; i++ {
			d := DownstreamPortDevice{ID: "swdp" + strconv.Itoa(i), Slot: PCISlot(i), Chassis: chassis}
			chassis++
			sw.Downstream = append(sw.Downstream, d)
			p := Port{Type: SwitchPort, Bus: d.ID, Path: PCIPath{rp.Slot, 0, d.Slot, 0}, Hotplug: true}
			if cfg.ColdPlugVFIO == SwitchPort && i < nCold {
				p.Hotplug = false
				coldPorts = append(coldPorts, p)
				continue
			}
			hotSwitch = append(hotSwitch, p)
		}
		t.Switch = sw
	}

	var hotBridge []Port
	nBridges := cfg.Bridges
	coldOnBridge := 0
	if cfg.ColdPlugVFIO == BridgePort {
		coldOnBridge = nCold
		if need := (nCold + BridgeSlots - 1) / BridgeSlots; need > nBridges {
			nBridges = need
		}
	}
	for i := 0; i < nBridges; i++ {
		s, err := takeSlot("PCI bridge")
		if err != nil {
			return Topology{}, Devices{}, err
		}
		br := BridgeDevice{ID: "br" + strconv.Itoa(i), Slot: s}
		t.Bridges = append(t.Bridges, br)
		for a := 1; a <= BridgeSlots; a++ {
			p := Port{Type: BridgePort, Bus: br.ID, Addr: PCISlot(a), Path: PCIPath{br.Slot, PCISlot(a)}, Hotplug: true}
			if coldOnBridge > 0 {
				coldOnBridge--
				p.Hotplug = false
				coldPorts = append(coldPorts, p)
				continue
			}
			hotBridge = append(hotBridge, p)
		}
	}

	for i := range fns {
		fns[i].Port = coldPorts[i]
	}
	placed.VFIO = fns
	t.Ports = append(append(append(append(t.Ports, hotRoot...), hotSwitch...), hotBridge...), coldPorts...)
	return t, placed, nil
}

// HotplugPorts counts the ports of t open to hot-plug.
func (t Topology) HotplugPorts() int {
	n := 0
	for _, p := range t.Ports {
		if p.Hotplug {
			n++
		}
	}
	return n
}
