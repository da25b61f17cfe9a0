package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sort"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// maxInterfaces bounds what one pod may ask for: each interface becomes a
// NIC on the VM's PCI bus.
const maxInterfaces = 8

// Attach scans the namespace at nsPath and connects every interface but
// lo to a new tap. A namespace with no interface but lo gives a Pod
// without endpoints (the VM gets no NIC). On error nothing is left in the
// namespace.
func Attach(ctx context.Context, nsPath string, model Model) (_ *Pod, retErr error) {
	if model != TCFilter {
		return nil, fmt.Errorf("network model %q: %w", model, errdefs.ErrNotImplemented)
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open pod network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()

	ifaces, routes, err := scan(h)
	if err != nil {
		return nil, fmt.Errorf("scan pod network namespace %s: %w", nsPath, err)
	}
	if len(ifaces) > maxInterfaces {
		return nil, fmt.Errorf("pod network namespace %s has %d interfaces; Berth connects at most %d: %w", nsPath, len(ifaces), maxInterfaces, errdefs.ErrInvalidArgument)
	}
	for _, i := range ifaces {
		if err := checkType(i); err != nil {
			return nil, err
		}
	}
	p := &Pod{NetNSPath: nsPath, Model: model, Routes: routes}
	defer func() {
		if retErr != nil {
			p.CloseTaps()
			detach(h, p.TapNames(), ifaceNames(p.Endpoints))
		}
	}()
	for n, i := range ifaces {
		e := Endpoint{Interface: i, TapName: tapName(n)}
		tap, err := openTap(ns, e.TapName)
		if err != nil {
			return nil, fmt.Errorf("create tap for %s: %w", i.Name, err)
		}
		e.Tap = tap
		p.Endpoints = append(p.Endpoints, e)
		if err := connect(h, &e); err != nil {
			return nil, fmt.Errorf("connect %s to %s: %w", i.Name, e.TapName, err)
		}
	}
	return p, nil
}

func ifaceNames(es []Endpoint) []string {
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
	}
	return names
}

// Detach removes what Attach added to the namespace at nsPath: the taps
// named (if they still exist: a tap whose VMM died is gone already) and
// the ingress qdisc, with its filter, of each interface named. A namespace
// that no longer exists has nothing left to remove.
func Detach(nsPath string, taps, ifaces []string) error {
	ns, err := netns.GetFromPath(nsPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pod network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	return detach(h, taps, ifaces)
}

func detach(h *netlink.Handle, taps, ifaces []string) error {
	var errs []error
	for _, name := range taps {
		if !isBerthTap(name) {
			continue // never remove what Berth did not create
		}
		l, err := h.LinkByName(name)
		if err != nil {
			continue // gone with the last descriptor
		}
		if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
		}
	}
	for _, name := range ifaces {
		l, err := h.LinkByName(name)
		if err != nil {
			continue // CNI DEL removed it
		}
		if err := h.QdiscDel(ingressQdisc(l.Attrs().Index)); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove ingress qdisc of %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Residue lists what Berth left in the namespace at nsPath: its taps and
// the interfaces that carry an ingress qdisc. Tests use it as a leak check.
func Residue(nsPath string) ([]string, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := listLinks(h)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if isBerthTap(a.Name) {
			out = append(out, "tap "+a.Name)
		}
		qs, err := h.QdiscList(l)
		if err != nil {
			return nil, err
		}
		for _, q := range qs {
			if q.Type() == "ingress" {
				out = append(out, "ingress qdisc on "+a.Name)
			}
		}
	}
	return out, nil
}

// scan reads the interfaces (but lo and Berth's taps) and their routes.
func scan(h *netlink.Handle) ([]Interface, []Route, error) {
	links, err := listLinks(h)
	if err != nil {
		return nil, nil, err
	}
	var ifaces []Interface
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || isBerthTap(a.Name) {
			continue
		}
		i := Interface{Name: a.Name, Index: a.Index, Type: l.Type(), MAC: a.HardwareAddr, MTU: a.MTU}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			if ad.IPNet == nil || ad.IP.IsLinkLocalUnicast() {
				continue
			}
			ip, ok := netip.AddrFromSlice(ad.IP)
			if !ok {
				continue
			}
			ones, _ := ad.Mask.Size()
			i.Addrs = append(i.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
		}
		ifaces = append(ifaces, i)
		names[a.Index] = a.Name
	}
	var routes []Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := h.RouteList(nil, fam)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, nil, fmt.Errorf("routes: %w", err)
		}
		for _, r := range rs {
			if r, ok := routeOf(r, fam, names); ok {
				routes = append(routes, r)
			}
		}
	}
	// Link-scope routes first: a gateway must be reachable before a route
	// through it can be added.
	sort.SliceStable(routes, func(a, b int) bool {
		return routes[a].Scope > routes[b].Scope
	})
	return ifaces, routes, nil
}

// routeOf turns a netlink route into a Route if the guest needs it. Routes
// the kernel made itself (an address's subnet, IPv6 link-local and
// multicast) come back by themselves when the guest adds the address.
func routeOf(r netlink.Route, fam int, names map[int]string) (Route, bool) {
	dev, ok := names[r.LinkIndex]
	if !ok || r.Protocol == unix.RTPROT_KERNEL || r.Table != unix.RT_TABLE_MAIN {
		return Route{}, false
	}
	out := Route{Device: dev, Scope: uint8(r.Scope), Family: 4}
	if fam == netlink.FAMILY_V6 {
		out.Family = 6
	}
	if r.Dst != nil {
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			return Route{}, false
		}
		ones, _ := r.Dst.Mask.Size()
		out.Dst = netip.PrefixFrom(ip.Unmap(), ones)
		if out.Dst.Bits() == 0 {
			out.Dst = netip.Prefix{} // 0.0.0.0/0 is the default route
		} else if ip.IsLinkLocalUnicast() || ip.IsMulticast() {
			return Route{}, false
		}
	}
	if r.Gw != nil {
		out.Gw, _ = netip.AddrFromSlice(r.Gw)
		out.Gw = out.Gw.Unmap()
	}
	if r.Src != nil {
		out.Src, _ = netip.AddrFromSlice(r.Src)
		out.Src = out.Src.Unmap()
	}
	return out, true
}

func listLinks(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for try := 0; try < 3; try++ {
		var links []netlink.Link
		if links, err = h.LinkList(); err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

// connect brings the tap up with the interface's MTU and redirects each
// direction with an ingress filter: whatever arrives on the veth (from
// the bridge) leaves through the tap into the VM, whatever the VM sends
// (arriving on the tap) leaves through the veth. The pod netns's own IP
// stack never sees the frames.
func connect(h *netlink.Handle, e *Endpoint) error {
	tap, err := h.LinkByName(e.TapName)
	if err != nil {
		return err
	}
	if err := h.LinkSetMTU(tap, e.MTU); err != nil {
		return fmt.Errorf("set MTU %d: %w", e.MTU, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("bring up: %w", err)
	}
	for _, q := range []int{e.Index, tap.Attrs().Index} {
		if err := h.QdiscAdd(ingressQdisc(q)); err != nil {
			return fmt.Errorf("add ingress qdisc: %w", err)
		}
	}
	if err := h.FilterAdd(redirect(e.Index, tap.Attrs().Index)); err != nil {
		return fmt.Errorf("redirect %s -> %s: %w", e.Name, e.TapName, err)
	}
	if err := h.FilterAdd(redirect(tap.Attrs().Index, e.Index)); err != nil {
		return fmt.Errorf("redirect %s -> %s: %w", e.TapName, e.Name, err)
	}
	return nil
}

func ingressQdisc(link int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

// redirect is a match-all u32 filter on from's ingress that sends each
// frame out of to (mirred egress redirect) and stops it there.
func redirect(from, to int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    netlink.MakeHandle(0xffff, 0),
			Priority:  1,
			Protocol:  unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to,
		}},
	}
}

// openTap creates a tap named name in ns and returns its queue. The tap
// is not persistent (it disappears with its last descriptor) and carries
// virtio-net headers, which lets QEMU pass checksum and segmentation
// offloads through.
func openTap(ns netns.NsHandle, name string) (*os.File, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	fd := -1
	err = inNetns(ns, func() error {
		// A tun device is created in the namespace of the process that
		// opened /dev/net/tun, not of the one calling TUNSETIFF.
		var err error
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0); err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	// Wrapped only once attached: a non-blocking descriptor is then
	// served by Go's poller (deadlines work); QEMU sets its own copy
	// non-blocking anyway.
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// inNetns runs fn on a thread moved into ns, then moves the thread back.
// If it cannot be moved back the thread stays locked, so Go discards it
// when the goroutine ends instead of running other code in the pod's
// namespace.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter pod network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to the shim's network namespace: %w", err))
			return // thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Counters are one interface's traffic counters, from the pod's point of
// view: the veth in the pod netns receives what the bridge sends to the
// pod and transmits what the VM sends (the tc redirects run on the
// interfaces' own ingress, after the kernel counted the frames).
type Counters struct {
	Name                                    string
	RxBytes, RxPackets, RxErrors, RxDropped uint64
	TxBytes, TxPackets, TxErrors, TxDropped uint64
}

// ReadCounters reads the counters of the named interfaces in the
// namespace at nsPath. They are the host kernel's, not the guest's: a
// guest cannot inflate them.
func ReadCounters(nsPath string, names []string) ([]Counters, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []Counters
	for _, n := range names {
		l, err := h.LinkByName(n)
		if err != nil {
			continue // CNI DEL removed it while the pod stops
		}
		st := l.Attrs().Statistics
		if st == nil {
			continue
		}
		out = append(out, Counters{Name: n,
			RxBytes: st.RxBytes, RxPackets: st.RxPackets, RxErrors: st.RxErrors, RxDropped: st.RxDropped,
			TxBytes: st.TxBytes, TxPackets: st.TxPackets, TxErrors: st.TxErrors, TxDropped: st.TxDropped})
	}
	return out, nil
}
