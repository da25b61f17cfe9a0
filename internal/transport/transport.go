// Package transport is the byte stream between the host and berth-agent in
// the guest. It hides which device carries it:
//
//   - vsock (AF_VSOCK, /dev/vhost-vsock on the host) when the host has it:
//     every Dial is a new vsock connection to a port.
//   - virtio-serial otherwise. A virtio-serial port is a single byte pipe,
//     so both ends run a yamux session over it and every Dial opens a new
//     yamux stream. The first four bytes of each stream name the port the
//     dialer wants, which gives the guest the same "one listener per port"
//     model vsock has.
//
// Code for both ends lives here so the framing is defined once. The package
// knows nothing about the messages it carries.
package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// Kind names a transport implementation.
type Kind string

const (
	// Vsock uses AF_VSOCK sockets (vhost-vsock on the host).
	Vsock Kind = "vsock"
	// VirtioSerial uses a virtio-serial port multiplexed with yamux.
	VirtioSerial Kind = "virtio-serial"
)

// Well-known ports of the agent.
const (
	// AgentPort serves the ttrpc agent API.
	AgentPort uint32 = 1024
	// StdioPort receives process stdio streams (api/agent StreamHeader).
	StdioPort uint32 = 1025
)

// SerialPortName is the name of the virtio-serial port the agent listens
// on; the guest finds it under /sys/class/virtio-ports/*/name.
const SerialPortName = "berth.agent"

// ErrClosed is returned by a Dialer or Listener used after Close, or after
// the underlying device went away (for example the VM died).
var ErrClosed = errors.New("transport closed")

// Dialer opens streams to the guest. Implementations are safe for
// concurrent use.
type Dialer interface {
	// Dial opens a new stream to port in the guest.
	Dial(ctx context.Context, port uint32) (net.Conn, error)
	// Close ends every stream and releases the device connection.
	Close() error
}

// yamuxConfig tunes yamux for a virtio-serial link to a VM that may run
// under software emulation: keepalives would misfire while a TCG guest is
// busy, and the default 10 s write timeout is too short for such a guest.
// The VMM's own lifetime, not keepalives, tells the host the guest is gone.
//
// AcceptBacklog bounds the streams waiting to be accepted (the guest's
// side: the host accepts none, see guard.go) and, in yamux, also the
// streams a side may have opened and not yet seen acknowledged.
func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 64
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 2 * time.Minute
	c.StreamOpenTimeout = 2 * time.Minute
	c.MaxStreamWindowSize = 1 << 20
	c.LogOutput = io.Discard
	return c
}

// writePort writes the 4-byte big-endian port header of a yamux stream.
func writePort(w io.Writer, port uint32) error {
	b := [4]byte{byte(port >> 24), byte(port >> 16), byte(port >> 8), byte(port)}
	_, err := w.Write(b[:])
	return err
}

// readPort reads the header written by writePort.
func readPort(r io.Reader) (uint32, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("read stream port header: %w", err)
	}
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), nil
}
