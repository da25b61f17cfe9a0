package transport

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/mdlayher/vsock"
)

// VsockDialer is the host end of the vsock transport.
type VsockDialer struct {
	cid uint32

	mu     sync.Mutex
	closed bool
}

// NewVsockDialer returns a dialer for the guest with context id cid.
func NewVsockDialer(cid uint32) *VsockDialer { return &VsockDialer{cid: cid} }

// Dial connects to port in the guest. vsock has no context-aware dial, so a
// cancelled ctx closes a connection that completes late.
func (d *VsockDialer) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := vsock.Dial(d.cid, port, nil)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("vsock dial cid %d port %d: %w", d.cid, port, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// Close marks the dialer closed; open connections are owned by callers.
func (d *VsockDialer) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	return nil
}

// ListenVsock listens on port in the guest.
func ListenVsock(port uint32) (net.Listener, error) {
	l, err := vsock.Listen(port, nil)
	if err != nil {
		return nil, fmt.Errorf("vsock listen port %d: %w", port, err)
	}
	return l, nil
}
