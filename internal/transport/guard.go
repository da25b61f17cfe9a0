package transport

import (
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
)

// The guest is hostile: whatever it sends over the virtio-serial link must
// not make the host hold memory it did not ask for. yamux itself would:
//
//   - a stream the guest opens waits in the session's accept queue with a
//     receive window (256 KiB) the guest may fill, and the host never
//     accepts guest streams (every stream is the host's Dial). The host
//     session therefore sends GoAway at once: yamux then answers every
//     stream the guest opens with a reset and discards its data, without
//     allocating anything for it.
//   - every ping request is answered from a new goroutine that waits, up to
//     ConnectionWriteTimeout, for the reply to be written; a guest that
//     floods pings and stops reading its port piles up goroutines. Neither
//     end sends keepalives (yamuxConfig), so the host drops ping requests
//     before yamux sees them.
//
// Streams the host opens are bounded by the host's own calls, and their
// receive windows by yamuxConfig's MaxStreamWindowSize.

// Wire constants of yamux's frame header (github.com/hashicorp/yamux
// const.go, spec.md): version, type, flags, stream id, length; data frames
// are followed by length bytes of payload.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	yamuxTypePing   = 2
	// YamuxTypeGoAway is the type of a yamux GoAway frame.
	YamuxTypeGoAway = 3
	yamuxFlagSYN    = 1
)

// FrameFilter reads yamux frames from r and passes them on, except those
// drop reports true for (by frame type and flags). The host drops the
// guest's ping requests with it; the test-only evil agent
// (test/e2e/evilagent) hides the host's GoAway from its own session.
func FrameFilter(r io.Reader, drop func(typ uint8, flags uint16) bool) io.Reader {
	return &frameFilter{r: r, drop: drop}
}

type frameFilter struct {
	r       io.Reader
	drop    func(typ uint8, flags uint16) bool
	hdr     [yamuxHeaderSize]byte
	pending []byte // part of hdr not yet returned to the reader
	body    int64  // payload bytes of the current data frame still to pass
	dropped atomic.Uint64
}

func (f *frameFilter) Read(p []byte) (int, error) {
	for {
		if len(f.pending) > 0 {
			n := copy(p, f.pending)
			f.pending = f.pending[n:]
			return n, nil
		}
		if f.body > 0 {
			if int64(len(p)) > f.body {
				p = p[:f.body]
			}
			n, err := f.r.Read(p)
			f.body -= int64(n)
			return n, err
		}
		if _, err := io.ReadFull(f.r, f.hdr[:]); err != nil {
			return 0, err
		}
		typ, flags := f.hdr[1], binary.BigEndian.Uint16(f.hdr[2:4])
		if typ != yamuxTypeData && f.drop(typ, flags) {
			f.dropped.Add(1)
			continue
		}
		if typ == yamuxTypeData {
			f.body = int64(binary.BigEndian.Uint32(f.hdr[8:12]))
		}
		f.pending = f.hdr[:]
	}
}

// isPingRequest is the host's filter of guest frames.
func isPingRequest(typ uint8, flags uint16) bool {
	return typ == yamuxTypePing && flags&yamuxFlagSYN != 0
}

// guardedConn is the host's connection to the QEMU chardev with the guest's
// frames filtered.
type guardedConn struct {
	net.Conn
	filter *frameFilter
}

func newGuardedConn(c net.Conn) *guardedConn {
	return &guardedConn{Conn: c, filter: &frameFilter{r: c, drop: isPingRequest}}
}

func (c *guardedConn) Read(p []byte) (int, error) { return c.filter.Read(p) }
