package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// Bounds on what the host may ask for: the request crosses the VM
// boundary and is checked like any other input.
const (
	maxNetInterfaces = 8
	maxNetAddresses  = 32
	maxNetRoutes     = 256
	// nicWait bounds the wait for a NIC to appear: the virtio_net module
	// is loaded at boot, but probing may still be running under a slow
	// (TCG) boot.
	nicWait = 10 * time.Second
)

// ConfigureNetwork applies the pod's network to the guest's own network
// namespace: lo up, then each NIC (found by MAC) renamed, sized, given its
// addresses and brought up, then the routes. Containers of the pod share
// this namespace (the sandbox container is created in it, see
// oci.ForGuest, and app containers join the sandbox's).
func (s *Service) ConfigureNetwork(ctx context.Context, r *api.NetworkConfig) (*emptypb.Empty, error) {
	if err := configureNetwork(ctx, r); err != nil {
		return nil, toGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

func configureNetwork(ctx context.Context, r *api.NetworkConfig) error {
	if len(r.Interfaces) > maxNetInterfaces || len(r.Routes) > maxNetRoutes {
		return fmt.Errorf("%d interfaces and %d routes: at most %d and %d: %w", len(r.Interfaces), len(r.Routes), maxNetInterfaces, maxNetRoutes, errdefs.ErrInvalidArgument)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	links := make([]netlink.Link, len(r.Interfaces))
	for i, iface := range r.Interfaces {
		if err := checkIfaceName(iface.Name); err != nil {
			return err
		}
		if len(iface.Addresses) > maxNetAddresses {
			return fmt.Errorf("interface %s: %d addresses, at most %d: %w", iface.Name, len(iface.Addresses), maxNetAddresses, errdefs.ErrInvalidArgument)
		}
		mac, err := net.ParseMAC(iface.Mac)
		if err != nil {
			return fmt.Errorf("interface %s: MAC %q: %v: %w", iface.Name, iface.Mac, err, errdefs.ErrInvalidArgument)
		}
		l, err := waitLinkByMAC(ctx, mac)
		if err != nil {
			return fmt.Errorf("interface %s: %w", iface.Name, err)
		}
		links[i] = l
	}
	// Most pods have one NIC, which the kernel already named as CNI did
	// (eth0): each netlink call skipped saves 3-6 ms of a pod's start
	// under TCG. Otherwise every NIC is renamed, down, to a temporary
	// name first, so that two NICs the kernel named in the other order
	// can swap names.
	rename := false
	for i, iface := range r.Interfaces {
		rename = rename || links[i].Attrs().Name != iface.Name
	}
	if rename {
		for i, l := range links {
			if err := netlink.LinkSetDown(l); err != nil {
				return fmt.Errorf("interface %s: %w", r.Interfaces[i].Name, err)
			}
			if err := netlink.LinkSetName(l, fmt.Sprintf("berthtmp%d", i)); err != nil {
				return fmt.Errorf("interface %s: rename: %w", r.Interfaces[i].Name, err)
			}
		}
	}
	for i, iface := range r.Interfaces {
		l := links[i]
		if rename {
			if err := netlink.LinkSetName(l, iface.Name); err != nil {
				return fmt.Errorf("interface %s: rename: %w", iface.Name, err)
			}
		}
		if iface.Mtu > 0 && int(iface.Mtu) != l.Attrs().MTU {
			if err := netlink.LinkSetMTU(l, int(iface.Mtu)); err != nil {
				return fmt.Errorf("interface %s: MTU %d: %w", iface.Name, iface.Mtu, err)
			}
		}
		for _, a := range iface.Addresses {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				return fmt.Errorf("interface %s: address %q: %v: %w", iface.Name, a, err, errdefs.ErrInvalidArgument)
			}
			if addr.IP.To4() == nil {
				// The host's pod netns already did duplicate address
				// detection for this address.
				addr.Flags |= unix.IFA_F_NODAD
			}
			if err := netlink.AddrReplace(l, addr); err != nil {
				return fmt.Errorf("interface %s: add %s: %w", iface.Name, a, err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("interface %s: up: %w", iface.Name, err)
		}
	}
	for _, rt := range r.Routes {
		route, err := routeFrom(rt)
		if err != nil {
			return err
		}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("route %s via %q dev %s: %w", orDefault(rt.Destination), rt.Gateway, rt.Device, err)
		}
	}
	logrus.WithField("interfaces", len(r.Interfaces)).WithField("routes", len(r.Routes)).Info("pod network configured")
	return nil
}

func orDefault(dst string) string {
	if dst == "" {
		return "default"
	}
	return dst
}

// checkIfaceName applies the kernel's rules for interface names
// (dev_valid_name), so a bad name is an InvalidArgument naming it.
func checkIfaceName(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\x00") || name == "lo" {
		return fmt.Errorf("interface name %q is not valid: %w", name, errdefs.ErrInvalidArgument)
	}
	return nil
}

func routeFrom(rt *api.NetworkRoute) (*netlink.Route, error) {
	bad := func(what string, v string) error {
		return fmt.Errorf("route %s: %s %q: %w", orDefault(rt.Destination), what, v, errdefs.ErrInvalidArgument)
	}
	l, err := netlink.LinkByName(rt.Device)
	if err != nil {
		return nil, fmt.Errorf("route %s: device %q: %w", orDefault(rt.Destination), rt.Device, err)
	}
	if rt.Scope > 255 {
		return nil, bad("scope", fmt.Sprint(rt.Scope))
	}
	route := &netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.Scope(rt.Scope)}
	switch rt.Family {
	case 4:
		route.Family = netlink.FAMILY_V4
	case 6:
		route.Family = netlink.FAMILY_V6
	default:
		return nil, bad("family", fmt.Sprint(rt.Family))
	}
	if rt.Destination != "" {
		_, dst, err := net.ParseCIDR(rt.Destination)
		if err != nil {
			return nil, bad("destination", rt.Destination)
		}
		route.Dst = dst
	}
	if rt.Gateway != "" {
		if route.Gw = net.ParseIP(rt.Gateway); route.Gw == nil {
			return nil, bad("gateway", rt.Gateway)
		}
	}
	if rt.Source != "" {
		if route.Src = net.ParseIP(rt.Source); route.Src == nil {
			return nil, bad("source", rt.Source)
		}
	}
	return route, nil
}

// waitLinkByMAC finds the NIC with the given address, waiting for the
// driver to probe it.
func waitLinkByMAC(ctx context.Context, mac net.HardwareAddr) (netlink.Link, error) {
	deadline := time.Now().Add(nicWait)
	for {
		links, err := netlink.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == mac.String() {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no NIC with MAC %s appeared within %s (is virtio_net in the guest image?): %w", mac, nicWait, errdefs.ErrNotFound)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
