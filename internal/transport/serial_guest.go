package transport

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// FindSerialPort returns the /dev path of the virtio-serial port called
// name, by reading /sys/class/virtio-ports/*/name (sysRoot is "/" in the
// guest; tests pass a fake tree).
func FindSerialPort(sysRoot, name string) (string, error) {
	dir := filepath.Join(sysRoot, "sys/class/virtio-ports")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("list virtio-serial ports: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", e.Name()), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q in %s", name, dir)
}

// SerialMux is the guest end of the virtio-serial transport. It serves yamux
// sessions on the port device one after another: when the host side goes
// away (a shim restarts) the port reads EOF, and the next host connection
// gets a fresh session. Streams are routed to per-port listeners by the
// header the host writes.
type SerialMux struct {
	open func() (io.ReadWriteCloser, error)
	// persistent keeps one open device across sessions and waits for the
	// host with poll(2) (the real port); otherwise every session gets a
	// fresh open (tests).
	persistent bool

	hooks MuxHooks // NewSerialMuxHooked

	mu        sync.Mutex
	listeners map[uint32]*portListener
	closed    bool
	done      chan struct{}
}

// NewSerialMux starts serving the virtio-serial port device at devPath.
//
// The device stays open for the mux's whole life. A virtio-serial port
// reads EOF at once while no host is connected; closing and reopening it
// then (as a first version did) lost host bytes that arrived in between,
// and the host's first request failed with "ttrpc: closed" under load.
// Instead the mux waits, with poll(2), until the port no longer reports
// POLLHUP (a host is connected) before starting each session.
func NewSerialMux(devPath string) *SerialMux {
	return NewSerialMuxHooked(devPath, MuxHooks{})
}

// MuxHooks change what a SerialMux does with each host connection. The
// real agent sets none; they exist for the test-only agent that plays a
// compromised guest (test/e2e/evilagent), which attacks the host on the
// very session the real agent serves.
type MuxHooks struct {
	// Conn, if set, wraps the port's byte stream under each session.
	Conn func(io.ReadWriteCloser) io.ReadWriteCloser
	// Session, if set, is started in a goroutine of its own with each
	// session.
	Session func(*yamux.Session)
}

// NewSerialMuxHooked is NewSerialMux with hooks.
func NewSerialMuxHooked(devPath string, hooks MuxHooks) *SerialMux {
	m := newSerialMux(func() (io.ReadWriteCloser, error) {
		return os.OpenFile(devPath, os.O_RDWR, 0)
	})
	m.persistent = true
	m.hooks = hooks
	go m.run()
	return m
}

// newSerialMux serves sessions on whatever open returns, opening it again
// for every session; tests pass one end of a socket pair per session
// instead of a device (and start run themselves).
func newSerialMux(open func() (io.ReadWriteCloser, error)) *SerialMux {
	return &SerialMux{open: open, listeners: map[uint32]*portListener{}, done: make(chan struct{})}
}

// Listen returns a listener for streams the host opens to port.
func (m *SerialMux) Listen(port uint32) (net.Listener, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if _, ok := m.listeners[port]; ok {
		return nil, fmt.Errorf("port %d: already listening", port)
	}
	l := &portListener{mux: m, port: port, conns: make(chan net.Conn, 16), done: make(chan struct{})}
	m.listeners[port] = l
	return l, nil
}

// Close stops serving and closes every listener.
func (m *SerialMux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	for _, l := range m.listeners {
		l.closeLocked()
	}
	m.mu.Unlock()
	return nil
}

func (m *SerialMux) isClosed() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// run serves one yamux session per host connection.
func (m *SerialMux) run() {
	var f io.ReadWriteCloser
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for !m.isClosed() {
		if f == nil {
			var err error
			if f, err = m.open(); err != nil {
				fmt.Fprintf(os.Stderr, "berth-agent: open virtio-serial port: %v\n", err)
				f = nil
				time.Sleep(500 * time.Millisecond)
				continue
			}
		}
		if m.persistent {
			if file, ok := f.(*os.File); ok && !m.waitHost(file) {
				continue
			}
		}
		start := time.Now()
		m.serveSession(noClose{f})
		if !m.persistent {
			f.Close()
			f = nil
		}
		// A session that ends at once (the host went away) must not spin.
		if time.Since(start) < time.Second {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// waitHost blocks until a host is connected to the port (poll reports no
// POLLHUP) and reports true, or false once the mux is closed.
func (m *SerialMux) waitHost(f *os.File) bool {
	fd := int32(f.Fd())
	for !m.isClosed() {
		fds := []unix.PollFd{{Fd: fd, Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		switch {
		case err == unix.EINTR:
		case err != nil:
			time.Sleep(100 * time.Millisecond)
		case n == 0, fds[0].Revents&unix.POLLHUP == 0:
			// Connected: idle (timeout without POLLHUP) or data waiting.
			return true
		default:
			time.Sleep(50 * time.Millisecond) // POLLHUP: no host yet
		}
	}
	return false
}

// noClose keeps the yamux session from closing the device when it ends:
// the mux owns it.
type noClose struct{ io.ReadWriter }

func (noClose) Close() error { return nil }

func (m *SerialMux) serveSession(rw io.ReadWriteCloser) {
	if m.hooks.Conn != nil {
		rw = m.hooks.Conn(rw)
	}
	s, err := yamux.Server(rw, yamuxConfig())
	if err != nil {
		return
	}
	defer s.Close()
	if m.hooks.Session != nil {
		go m.hooks.Session(s)
	}
	go func() {
		select {
		case <-m.done:
			s.Close()
		case <-s.CloseChan():
		}
	}()
	for {
		st, err := s.AcceptStream()
		if err != nil {
			return
		}
		go m.route(st)
	}
}

func (m *SerialMux) route(st *yamux.Stream) {
	port, err := readPort(st)
	if err != nil {
		st.Close()
		return
	}
	m.mu.Lock()
	l := m.listeners[port]
	m.mu.Unlock()
	if l == nil {
		st.Close()
		return
	}
	select {
	case l.conns <- st:
	case <-l.done:
		st.Close()
	}
}

type portListener struct {
	mux   *SerialMux
	port  uint32
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *portListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, ErrClosed
	}
}

func (l *portListener) closeLocked() { l.once.Do(func() { close(l.done) }) }

func (l *portListener) Close() error {
	l.mux.mu.Lock()
	defer l.mux.mu.Unlock()
	if l.mux.listeners[l.port] == l {
		delete(l.mux.listeners, l.port)
	}
	l.closeLocked()
	return nil
}

func (l *portListener) Addr() net.Addr { return serialAddr{port: l.port} }

type serialAddr struct{ port uint32 }

func (serialAddr) Network() string  { return "virtio-serial" }
func (a serialAddr) String() string { return fmt.Sprintf("virtio-serial:%d", a.port) }
