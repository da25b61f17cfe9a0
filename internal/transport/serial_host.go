package transport

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/hashicorp/yamux"
)

// SerialDialer is the host end of the virtio-serial transport. QEMU exposes
// the port as a unix socket (chardev socket,server=on); the dialer connects
// to it once and runs a yamux client session over the connection.
type SerialDialer struct {
	socketPath string

	mu      sync.Mutex
	session *yamux.Session
	conn    *guardedConn // the session's connection (tests read its filter)
	closed  bool
}

// NewSerialDialer returns a dialer for the QEMU chardev socket at path.
// Nothing is connected until the first Dial.
func NewSerialDialer(socketPath string) *SerialDialer {
	return &SerialDialer{socketPath: socketPath}
}

func (d *SerialDialer) getSession(ctx context.Context) (*yamux.Session, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	if d.session != nil && !d.session.IsClosed() {
		return d.session, nil
	}
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "unix", d.socketPath)
	if err != nil {
		return nil, fmt.Errorf("connect to virtio-serial socket %s: %w", d.socketPath, err)
	}
	gc := newGuardedConn(conn)
	s, err := yamux.Client(gc, yamuxConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start yamux session on %s: %w", d.socketPath, err)
	}
	// The host accepts no stream from the guest (guard.go): after GoAway,
	// yamux resets each one on arrival and holds nothing for it.
	if err := s.GoAway(); err != nil {
		s.Close()
		return nil, fmt.Errorf("start yamux session on %s: %w", d.socketPath, err)
	}
	d.session, d.conn = s, gc
	return s, nil
}

// Dial opens a yamux stream and names the wanted port in its first bytes.
// The stream is usable at once: bytes written before the guest agent
// accepts it wait in the port's buffers.
func (d *SerialDialer) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	s, err := d.getSession(ctx)
	if err != nil {
		return nil, err
	}
	st, err := s.OpenStream()
	if err != nil {
		if s.IsClosed() {
			return nil, fmt.Errorf("open stream to port %d: %w: %v", port, ErrClosed, err)
		}
		return nil, fmt.Errorf("open stream to port %d: %w", port, err)
	}
	if err := writePort(st, port); err != nil {
		st.Close()
		return nil, fmt.Errorf("open stream to port %d: %w", port, err)
	}
	return st, nil
}

// Close ends the session and every stream on it.
func (d *SerialDialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.session != nil {
		return d.session.Close()
	}
	return nil
}
