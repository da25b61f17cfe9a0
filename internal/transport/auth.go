package transport

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Every stream from the host to the agent, on either transport, starts
// with the sandbox's secret: TokenBytes random bytes the host generates per
// sandbox and gives the guest through a channel only root on the host can
// read (a QEMU fw_cfg file from the sandbox's own directory). Without it,
// any host process able to open a vsock socket to the guest's CID (which
// is on QEMU's command line) could speak the agent API and exec into every
// container. The agent closes a stream that does not start with the
// secret, before reading anything else from it.

// SecretFwCfgName is the fw_cfg item that carries the secret; the guest
// reads it at /sys/firmware/qemu_fw_cfg/by_name/<name>/raw.
const SecretFwCfgName = "opt/berth/secret"

// CmdlineAuth is the kernel parameter ("berth.auth=1") by which the host
// tells the agent that it must require the secret: the agent then refuses
// to serve at all without one, rather than serving unauthenticated.
const CmdlineAuth = "berth.auth"

// TokenBytes is the length of the per-sandbox secret.
const TokenBytes = 32

// tokenTimeout bounds how long the agent waits for a stream's secret, so
// a peer that sends nothing cannot hold an accept slot.
var tokenTimeout = 10 * time.Second

// WithToken returns a Dialer that writes token at the start of every
// stream d opens.
func WithToken(d Dialer, token []byte) Dialer {
	return &tokenDialer{Dialer: d, token: append([]byte(nil), token...)}
}

type tokenDialer struct {
	Dialer
	token []byte
}

func (d *tokenDialer) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := d.Dialer.Dial(ctx, port)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(d.token); err != nil {
		c.Close()
		return nil, fmt.Errorf("send the sandbox secret on port %d: %w", port, err)
	}
	return c, nil
}

// RequireToken returns a listener whose Accept yields only connections
// that start with token (consumed); others are closed. Checks run
// concurrently, so one silent peer does not delay the others.
func RequireToken(l net.Listener, token []byte) net.Listener {
	t := &tokenListener{Listener: l, token: append([]byte(nil), token...), conns: make(chan net.Conn), done: make(chan struct{})}
	go t.run()
	return t
}

type tokenListener struct {
	net.Listener
	token []byte
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error // set before done is closed
	// rejected counts closed connections (for tests).
	mu       sync.Mutex
	rejected int
}

func (t *tokenListener) run() {
	for {
		c, err := t.Listener.Accept()
		if err != nil {
			t.once.Do(func() { t.err = err; close(t.done) })
			return
		}
		go t.check(c)
	}
}

func (t *tokenListener) check(c net.Conn) {
	got := make([]byte, len(t.token))
	c.SetReadDeadline(time.Now().Add(tokenTimeout))
	_, err := io.ReadFull(c, got)
	c.SetReadDeadline(time.Time{})
	if err != nil || subtle.ConstantTimeCompare(got, t.token) != 1 {
		t.mu.Lock()
		t.rejected++
		t.mu.Unlock()
		c.Close()
		return
	}
	select {
	case t.conns <- c:
	case <-t.done:
		c.Close()
	}
}

func (t *tokenListener) Accept() (net.Conn, error) {
	select {
	case c := <-t.conns:
		return c, nil
	case <-t.done:
		return nil, t.err
	}
}

func (t *tokenListener) Close() error {
	err := t.Listener.Close()
	t.once.Do(func() { t.err = ErrClosed; close(t.done) })
	return err
}
