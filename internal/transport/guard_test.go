package transport

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// rawFrame is a yamux frame as a hostile guest writes it, bypassing any
// yamux library.
func rawFrame(typ uint8, flags uint16, stream uint32, length uint32) []byte {
	b := make([]byte, yamuxHeaderSize)
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:4], flags)
	binary.BigEndian.PutUint32(b[4:8], stream)
	binary.BigEndian.PutUint32(b[8:12], length)
	return b
}

// A guest that opens hundreds of streams, each with a full 256 KiB window
// of data, and floods ping requests, makes the host hold neither the
// streams nor a goroutine per ping; the host's own streams keep working.
func TestSerialHostHoldsNothingForHostileGuestFrames(t *testing.T) {
	const (
		streams   = 300
		payload   = 256 << 10
		pings     = 50000
		heapBound = 16 << 20
	)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	flooded := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		body := make([]byte, payload)
		for i := 0; i < streams; i++ {
			// Guest (yamux server) streams have even ids.
			if _, err := c.Write(append(rawFrame(yamuxTypeData, yamuxFlagSYN, uint32(2+2*i), payload), body...)); err != nil {
				return
			}
		}
		for i := 0; i < pings; i++ {
			if _, err := c.Write(rawFrame(yamuxTypePing, yamuxFlagSYN, 0, uint32(i))); err != nil {
				return
			}
		}
		flooded <- c
	}()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	d := NewSerialDialer(sock)
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Dial connects (the flood starts) and sends its SYN, which waits in
	// the socket until the guest below starts a real session.
	st, err := d.Dial(ctx, AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var guest net.Conn
	select {
	case guest = <-flooded:
	case <-ctx.Done():
		t.Fatal("guest could not write its flood: the host stopped reading")
	}
	defer guest.Close()
	filter := d.conn.filter
	for filter.dropped.Load() < pings {
		if ctx.Err() != nil {
			t.Fatalf("host dropped %d of %d ping requests", filter.dropped.Load(), pings)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The host closes each stream the guest opens as it accepts it; the
	// last few may still be in flight when the pings are counted.
	for d.session.NumStreams() > 1 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if n := d.session.NumStreams(); n > 1 {
		t.Errorf("host session holds %d streams after the guest opened %d, want only its own", n, streams)
	}
	if g := runtime.NumGoroutine(); g > goroutines+20 {
		t.Errorf("%d goroutines after %d guest pings, %d before", g, pings, goroutines)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > heapBound {
		t.Errorf("host heap grew by %d MiB for %d unaccepted guest streams", grown>>20, streams)
	}

	// Now a well-behaved guest session on the same link answers the
	// host's stream.
	srv, err := yamux.Server(guest, yamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	gs, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if port, err := readPort(gs); err != nil || port != AgentPort {
		t.Fatalf("guest read port %d, %v", port, err)
	}
	go io.Copy(gs, gs)
	st.Write([]byte("still-works"))
	buf := make([]byte, len("still-works"))
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "still-works" {
		t.Fatalf("host stream after the flood: %q, %v", buf, err)
	}
}
