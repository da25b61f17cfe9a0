package agent

import (
	"context"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// inNewNetns runs f on a thread of its own in a fresh network namespace,
// standing in for the guest's; the thread is discarded afterwards.
func inNewNetns(t *testing.T, f func() error) error {
	t.Helper()
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("needs root and network namespaces (not in -short)")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// addNIC adds a link named name with MAC mac, down, as the guest's kernel
// names a virtio-net NIC it probed: a veth (this host has no dummy
// driver), its peer named after it.
func addNIC(name, mac string) error {
	hw, _ := net.ParseMAC(mac)
	return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw, MTU: 1500}, PeerName: "peer-" + name})
}

// The guest's NICs end up named, addressed and up as CNI left them on the
// host, whether the kernel named them alike (one eth0, the common pod,
// which configureNetwork no longer renames) or otherwise (two NICs that
// must swap names).
func TestGuestNICsTakeTheNamesAddressesAndMTUCNIGave(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kernel map[string]string // kernel's name -> MAC
		want   []*api.NetworkInterface
	}{
		{"named alike", map[string]string{"eth0": "02:00:00:00:00:01"},
			[]*api.NetworkInterface{{Name: "eth0", Mac: "02:00:00:00:00:01", Mtu: 1400, Addresses: []string{"10.250.9.2/24"}}}},
		{"swapped", map[string]string{"eth0": "02:00:00:00:00:01", "eth1": "02:00:00:00:00:02"},
			[]*api.NetworkInterface{
				{Name: "eth0", Mac: "02:00:00:00:00:02", Addresses: []string{"10.250.9.2/24"}},
				{Name: "eth1", Mac: "02:00:00:00:00:01", Addresses: []string{"10.250.10.2/24"}},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := inNewNetns(t, func() error {
				for name, mac := range tc.kernel {
					if err := addNIC(name, mac); err != nil {
						return err
					}
				}
				if err := configureNetwork(context.Background(), &api.NetworkConfig{Interfaces: tc.want}); err != nil {
					return err
				}
				for _, w := range tc.want {
					l, err := netlink.LinkByName(w.Name)
					if err != nil {
						t.Errorf("no %s after the configuration: %v", w.Name, err)
						continue
					}
					a := l.Attrs()
					if a.HardwareAddr.String() != w.Mac {
						t.Errorf("%s has MAC %s, want %s", w.Name, a.HardwareAddr, w.Mac)
					}
					if w.Mtu > 0 && a.MTU != int(w.Mtu) {
						t.Errorf("%s has MTU %d, want %d", w.Name, a.MTU, w.Mtu)
					}
					if a.Flags&net.FlagUp == 0 {
						t.Errorf("%s is down", w.Name)
					}
					addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
					if len(addrs) != 1 || addrs[0].IPNet.String() != w.Addresses[0] {
						t.Errorf("%s has addresses %v, want %s", w.Name, addrs, w.Addresses[0])
					}
				}
				lo, err := netlink.LinkByName("lo")
				if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
					t.Errorf("lo is not up: %v", err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
