package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// LoopbackForwarder makes the pod netns's loopback reach the guest.
//
// CRI PortForward (kubectl port-forward) is served by containerd itself: it
// enters the pod's network namespace and dials localhost:PORT. Under runc
// that is the pod's own loopback; under a VM runtime the server listens in
// the guest, and the host-side namespace only holds the veth and the tap.
// So Berth listens on one loopback port in the pod netns, redirects every
// other loopback TCP port there (an iptables REDIRECT in the namespace's nat
// OUTPUT chain), reads each connection's original port (SO_ORIGINAL_DST)
// and relays it to the pod's IP from the shim's own namespace, which
// reaches the guest the way any client on the host does (bridge, veth, tc
// redirect, tap).
type LoopbackForwarder struct {
	nsPath string
	ln     net.Listener
	port   int
	target netip.Addr
	wg     sync.WaitGroup
}

// ServeLoopback starts the forwarder for the namespace at nsPath, relaying
// to target (the pod's IPv4 address).
func ServeLoopback(nsPath string, target netip.Addr) (*LoopbackForwarder, error) {
	if !target.Is4() {
		return nil, fmt.Errorf("port forwarding relays to an IPv4 pod address, not %s", target)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, fmt.Errorf("port forwarding needs iptables on the host: %w", err)
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open pod network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	f := &LoopbackForwarder{nsPath: nsPath, target: target}
	// The socket belongs to the namespace it was created in.
	if err := inNetns(ns, func() error {
		var err error
		f.ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen on the pod netns loopback: %w", err)
	}
	f.port = f.ln.Addr().(*net.TCPAddr).Port
	if err := f.iptables("-A"); err != nil {
		f.ln.Close()
		return nil, err
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Port is the loopback port the forwarder listens on in the pod netns.
func (f *LoopbackForwarder) Port() int { return f.port }

// iptables adds (-A) or deletes (-D) the REDIRECT rule inside the pod
// netns (nsenter: iptables has no namespace option).
func (f *LoopbackForwarder) iptables(op string) error {
	p := strconv.Itoa(f.port)
	out, err := exec.Command("nsenter", "--net="+f.nsPath, "iptables", "-w", "-t", "nat", op, "OUTPUT",
		"-o", "lo", "-d", "127.0.0.1/32", "-p", "tcp", "!", "--dport", p, "-j", "REDIRECT", "--to-ports", p).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s REDIRECT in %s: %v: %s", op, f.nsPath, err, out)
	}
	return nil
}

// Close stops accepting, removes the rule (the namespace may already be
// gone) and waits for the accept loop.
func (f *LoopbackForwarder) Close() error {
	err := f.ln.Close()
	f.iptables("-D")
	f.wg.Wait()
	return err
}

func (f *LoopbackForwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				logrus.WithError(err).Warn("port forward: accept")
			}
			return
		}
		go f.relay(c.(*net.TCPConn))
	}
}

func (f *LoopbackForwarder) relay(c *net.TCPConn) {
	defer c.Close()
	port, err := originalPort(c)
	if err != nil {
		logrus.WithError(err).Warn("port forward: original destination")
		return
	}
	up, err := net.Dial("tcp4", netip.AddrPortFrom(f.target, port).String())
	if err != nil {
		logrus.WithError(err).WithField("port", port).Warn("port forward: dial the pod")
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}

// originalPort reads the destination port a REDIRECTed connection was
// made to (SO_ORIGINAL_DST gives a sockaddr_in).
func originalPort(c *net.TCPConn) (uint16, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var port uint16
	var serr error
	if err := rc.Control(func(fd uintptr) {
		var mreq *unix.IPv6Mreq // 16 bytes, the size of a sockaddr_in
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if serr == nil {
			port = binary.BigEndian.Uint16(mreq.Multiaddr[2:4])
		}
	}); err != nil {
		return 0, err
	}
	return port, serr
}
