package network

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// These tests need root and real network namespaces (no VM): a "pod"
// namespace holding eth0 as CNI would leave it, and a "peer" namespace on
// the other end of the veth standing in for the bridge.

func requireRoot(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("needs root and network namespaces (not in -short)")
	}
}

// newNetns creates a named network namespace and returns its path and a
// handle; both go away with the test.
func newNetns(t *testing.T, name string) (string, netns.NsHandle) {
	t.Helper()
	name = fmt.Sprintf("%s-%d", name, os.Getpid())
	var ns netns.NsHandle
	errc := make(chan error)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		ns, err = netns.NewNamed(name) // moves this thread into it
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() { ns.Close(); netns.DeleteNamed(name) })
	return filepath.Join("/var/run/netns", name), ns
}

func handleIn(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// podWithVeth builds what the CNI bridge plugin leaves: eth0 (MTU 1400,
// 10.250.7.2/24, default route via .1) in the pod netns, its peer
// (10.250.7.1/24) in the peer netns.
func podWithVeth(t *testing.T) (podPath string, podH, peerH *netlink.Handle, peerNs netns.NsHandle) {
	t.Helper()
	podPath, podNs := newNetns(t, "berth-test-pod")
	_, peerNs = newNetns(t, "berth-test-peer")
	podH, peerH = handleIn(t, podNs), handleIn(t, peerNs)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1400, Namespace: netlink.NsFd(podNs)}, PeerName: "peer0", PeerNamespace: netlink.NsFd(peerNs)}
	if err := podH.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, side := range []struct {
		h          *netlink.Handle
		name, addr string
	}{{podH, "eth0", "10.250.7.2/24"}, {peerH, "peer0", "10.250.7.1/24"}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(side.addr)
		if err := side.h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	eth0, _ := podH.LinkByName("eth0")
	if err := podH.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.250.7.1")}); err != nil {
		t.Fatalf("default route: %v", err)
	}
	return podPath, podH, peerH, peerNs
}

func TestAttachRedirectsBothWaysAndDetachRemovesAll(t *testing.T) {
	requireRoot(t)
	podPath, podH, peerH, peerNs := podWithVeth(t)
	eth0, _ := podH.LinkByName("eth0")
	peer0, _ := peerH.LinkByName("peer0")

	p, err := Attach(context.Background(), podPath, TCFilter)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseTaps()
	if len(p.Endpoints) != 1 {
		t.Fatalf("endpoints %+v, want eth0 only", p.Endpoints)
	}
	e := p.Endpoints[0]
	if e.Name != "eth0" || e.Type != "veth" || e.MTU != 1400 || e.MAC.String() != eth0.Attrs().HardwareAddr.String() ||
		len(e.Addrs) != 1 || e.Addrs[0] != netip.MustParsePrefix("10.250.7.2/24") || e.TapName != "tap0_berth" {
		t.Errorf("endpoint %+v", e)
	}
	wantRoute := Route{Gw: netip.MustParseAddr("10.250.7.1"), Device: "eth0", Family: 4}
	if len(p.Routes) != 1 || p.Routes[0] != wantRoute {
		t.Errorf("routes %+v, want only %+v (the subnet route is the kernel's)", p.Routes, wantRoute)
	}
	tap, err := podH.LinkByName("tap0_berth")
	if err != nil || tap.Attrs().MTU != 1400 || tap.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("tap: %v %+v", err, tap)
	}
	if res, _ := Residue(podPath); len(res) != 3 {
		t.Errorf("residue while attached: %v, want the tap and two ingress qdiscs", res)
	}

	// veth -> tap: the peer's ARP request for the pod's address comes out
	// of the tap, not answered by the pod netns's own stack.
	if err := inNetns(peerNs, func() error {
		c, err := net.Dial("udp4", "10.250.7.2:9")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const vnetHdr = 10 // struct virtio_net_hdr, before every frame
	buf := make([]byte, 2048)
	var got []byte
	e.Tap.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got == nil {
		n, err := e.Tap.Read(buf)
		if err != nil {
			t.Fatalf("no ARP request from the peer came out of the tap: %v", err)
		}
		f := buf[vnetHdr:n]
		if len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_ARP && bytes.Equal(f[38:42], []byte{10, 250, 7, 2}) {
			got = f
		}
	}
	if !bytes.Equal(got[6:12], peer0.Attrs().HardwareAddr) {
		t.Errorf("ARP request from %x, want the peer %s", got[6:12], peer0.Attrs().HardwareAddr)
	}

	// tap -> veth: an ARP reply written by "the VM" with eth0's MAC
	// reaches the peer, which learns the pod's address.
	podMAC, peerMAC := []byte(eth0.Attrs().HardwareAddr), []byte(peer0.Attrs().HardwareAddr)
	reply := make([]byte, vnetHdr, vnetHdr+42)
	reply = append(reply, peerMAC...)
	reply = append(reply, podMAC...)
	reply = append(reply, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2)
	reply = append(reply, podMAC...)
	reply = append(reply, 10, 250, 7, 2)
	reply = append(reply, peerMAC...)
	reply = append(reply, 10, 250, 7, 1)
	if _, err := e.Tap.Write(reply); err != nil {
		t.Fatalf("write to tap: %v", err)
	}
	learned := false
	for deadline := time.Now().Add(5 * time.Second); !learned && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		neighs, _ := peerH.NeighList(peer0.Attrs().Index, netlink.FAMILY_V4)
		for _, n := range neighs {
			learned = learned || n.IP.Equal(net.ParseIP("10.250.7.2")) && bytes.Equal(n.HardwareAddr, podMAC)
		}
	}
	if !learned {
		t.Error("the ARP reply written to the tap did not reach the peer through the veth")
	}

	// Teardown: Berth's descriptor closed (QEMU's too, in real life) and
	// Detach leave nothing.
	p.CloseTaps()
	if err := Detach(podPath, p.TapNames(), []string{"eth0"}); err != nil {
		t.Fatal(err)
	}
	if res, err := Residue(podPath); err != nil || len(res) != 0 {
		t.Errorf("left after Detach: %v %v", res, err)
	}
	if _, err := podH.LinkByName("eth0"); err != nil {
		t.Errorf("Detach removed CNI's eth0: %v", err)
	}
	// Detach is idempotent and a vanished netns is not an error.
	if err := Detach(podPath, p.TapNames(), []string{"eth0"}); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if err := Detach("/var/run/netns/berth-test-gone", []string{"tap0_berth"}, []string{"eth0"}); err != nil {
		t.Errorf("Detach of a missing netns: %v", err)
	}
}

// A tap is not persistent: closing every descriptor (QEMU killed, shim
// killed) removes it with its filter.
func TestTapVanishesWithItsDescriptors(t *testing.T) {
	requireRoot(t)
	podPath, podH, _, _ := podWithVeth(t)
	p, err := Attach(context.Background(), podPath, TCFilter)
	if err != nil {
		t.Fatal(err)
	}
	p.CloseTaps()
	if _, err := podH.LinkByName("tap0_berth"); err == nil {
		t.Error("tap0_berth still exists after its only descriptor was closed")
	}
	if err := Detach(podPath, p.TapNames(), []string{"eth0"}); err != nil {
		t.Fatal(err)
	}
}

// An interface type the model cannot connect is an error naming the
// interface, and Attach leaves nothing behind.
func TestAttachRefusesUnsupportedInterface(t *testing.T) {
	requireRoot(t)
	podPath, podH, _, _ := podWithVeth(t)
	if err := podH.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br9"}}); err != nil {
		t.Fatal(err)
	}
	_, err := Attach(context.Background(), podPath, TCFilter)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(`br9 in the pod network namespace is a "bridge"`)) {
		t.Fatalf("Attach with a bridge in the pod netns: %v", err)
	}
	if res, _ := Residue(podPath); len(res) != 0 {
		t.Errorf("left after a refused Attach: %v", res)
	}
}

// A connection to any loopback port in the pod netns (what containerd's
// PortForward dials) reaches that port on the target address.
func TestServeLoopbackRelaysEveryPort(t *testing.T) {
	requireRoot(t)
	podPath, podH, _, _ := podWithVeth(t)
	podNs, err := netns.GetFromPath(podPath)
	if err != nil {
		t.Fatal(err)
	}
	defer podNs.Close()
	lo, _ := podH.LinkByName("lo")
	podH.LinkSetUp(lo)
	// The "guest" server: here on the test's own loopback.
	srv, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello from the server\n"))
			c.Close()
		}
	}()
	f, err := ServeLoopback(podPath, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Addr().(*net.TCPAddr).Port
	var got []byte
	if err := inNetns(podNs, func() error {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("localhost:%d", port), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err = io.ReadAll(c)
		return err
	}); err != nil {
		t.Fatalf("dial localhost:%d in the pod netns: %v", port, err)
	}
	if string(got) != "hello from the server\n" {
		t.Errorf("read %q through the forwarder", got)
	}
	if err := f.Close(); err != nil {
		t.Error(err)
	}
	// Once closed, the rule is gone: loopback is the namespace's own again.
	if err := inNetns(podNs, func() error {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("connected after Close")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
