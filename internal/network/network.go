// Package network connects a pod's network namespace on the host to the
// pod's VM. CNI (through containerd's CRI plugin) leaves a network
// namespace holding a veth with the pod's IP, MAC, MTU and routes; the VM
// cannot use that veth directly, so for every interface there (except lo)
// Berth creates a tap in the same namespace and joins the two with tc
// ingress filters that redirect every frame from one to the other
// ("tcfilter", Kata Containers' default model, also awslabs'
// tc-redirect-tap). QEMU gets the tap's file descriptor, and the guest's
// virtio-net NIC carries the veth's MAC, so the packets leaving the VM look
// exactly like the ones the veth would send.
//
// The package works on a network namespace handle and never moves the
// calling thread for good: netlink requests go through a handle bound to
// the namespace (netlink.NewHandleAt), and the one operation that must run
// inside it (opening /dev/net/tun, whose devices are created in the opener's
// namespace) runs on a locked thread that is moved back afterwards, or
// thrown away if it cannot be.
//
// Nothing here knows about QEMU, containers or OCI: Attach returns typed
// endpoints (with the tap file), the caller describes NICs from them.
package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
)

// Model is how interfaces are connected to the VM (network.network_model).
type Model string

// TCFilter is the tap + tc mirred redirect model.
const TCFilter Model = "tcfilter"

// ErrUnsupportedInterface is wrapped by the error for an interface whose
// type Berth cannot connect to a VM.
var ErrUnsupportedInterface = errors.New("unsupported interface")

// Interface is one interface CNI configured in the pod's network
// namespace.
type Interface struct {
	Name  string
	Index int
	// Type is the kernel's link type ("veth", "macvlan", ...).
	Type string
	MAC  net.HardwareAddr
	MTU  int
	// Addrs are the interface's global and site addresses; link-local
	// IPv6 addresses are left out (the guest derives the same one from
	// the same MAC).
	Addrs []netip.Prefix
}

// Route is one route of the pod's network namespace (main table).
type Route struct {
	// Dst is the destination; the zero Prefix is a default route.
	Dst netip.Prefix
	// Gw is the next hop; the zero Addr for a directly connected route.
	Gw netip.Addr
	// Device is the name of the route's interface.
	Device string
	// Src is the preferred source address, if the route has one.
	Src netip.Addr
	// Scope is the kernel's route scope (0 universe, 253 link).
	Scope uint8
	// Family is 4 or 6.
	Family int
}

// Endpoint is an interface connected to a tap in the same namespace.
type Endpoint struct {
	Interface
	// TapName is the tap's name in the pod netns (tapN_berth).
	TapName string
	// Tap is the tap queue Berth opened in the namespace: hand it to the
	// VMM, then close it (Pod.CloseTaps). The tap is not persistent: once
	// every descriptor of it is closed (the VMM died), the kernel removes
	// it with its qdisc and filter.
	Tap *os.File
}

// Pod is a pod network namespace connected to taps for one VM.
type Pod struct {
	// NetNSPath is the namespace's path (/var/run/netns/cni-...).
	NetNSPath string
	Model     Model
	Endpoints []Endpoint
	// Routes are the namespace's routes over the endpoints, link routes
	// first so that every gateway is reachable when its route is added.
	Routes []Route
}

// CloseTaps closes Berth's descriptors of the taps once the VMM holds its
// own (or when the VMM could not start).
func (p *Pod) CloseTaps() {
	for i := range p.Endpoints {
		if f := p.Endpoints[i].Tap; f != nil {
			f.Close()
			p.Endpoints[i].Tap = nil
		}
	}
}

// TapNames lists the endpoints' taps, which is what Detach needs.
func (p *Pod) TapNames() []string {
	var names []string
	for _, e := range p.Endpoints {
		names = append(names, e.TapName)
	}
	return names
}

// tapName names the tap of the i-th endpoint. The suffix marks it as
// Berth's, so a scan never mistakes it for a CNI interface and a cleanup
// never removes someone else's.
func tapName(i int) string { return fmt.Sprintf("tap%d_berth", i) }

// isBerthTap says whether name is one of Berth's taps.
func isBerthTap(name string) bool {
	var n int
	_, err := fmt.Sscanf(name, "tap%d_berth", &n)
	return err == nil && tapName(n) == name
}

// connectable says which link types the tcfilter model can join to a
// tap: anything that carries Ethernet frames.
var connectable = map[string]bool{
	"veth": true, "macvlan": true, "ipvlan": true, "vlan": true, "device": true, "bridge": false,
}

// checkType returns an error naming the interface and its type when the
// model cannot connect it, rather than starting a pod without network.
func checkType(i Interface) error {
	if !connectable[i.Type] {
		return fmt.Errorf("interface %s in the pod network namespace is a %q, which Berth cannot connect to a VM (network_model %q handles veth, macvlan, ipvlan, vlan and physical devices): %w", i.Name, i.Type, TCFilter, ErrUnsupportedInterface)
	}
	if len(i.MAC) != 6 {
		return fmt.Errorf("interface %s (%s) has no Ethernet address, which a VM NIC needs: %w", i.Name, i.Type, ErrUnsupportedInterface)
	}
	return nil
}
