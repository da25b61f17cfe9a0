package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeQEMU stands in for QEMU's chardev socket: the host dials the unix
// socket, and the guest mux reads the accepted connection as if it were
// the port device.
func fakeQEMU(t *testing.T) (sock string, mux *SerialMux) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	mux = newSerialMux(func() (io.ReadWriteCloser, error) { return ln.Accept() })
	go mux.run()
	t.Cleanup(func() { mux.Close() })
	return sock, mux
}

func TestSerialRoutesStreamsByPort(t *testing.T) {
	sock, mux := fakeQEMU(t)
	l1, err := mux.Listen(AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := mux.Listen(StdioPort)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mux.Listen(AgentPort); err == nil {
		t.Fatal("second Listen on the same port succeeded")
	}
	d := NewSerialDialer(sock)
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// 4 MiB each way proves flow control across yamux windows.
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	for _, tc := range []struct {
		port uint32
		l    net.Listener
	}{{StdioPort, l2}, {AgentPort, l1}} {
		c, err := d.Dial(ctx, tc.port)
		if err != nil {
			t.Fatal(err)
		}
		go func() { c.Write(payload); c.Close() }()
		s, err := tc.l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("port %d: got %d bytes, want %d identical bytes", tc.port, len(got), len(payload))
		}
	}
}

func TestSerialNewSessionAfterHostReconnects(t *testing.T) {
	sock, mux := fakeQEMU(t)
	l, _ := mux.Listen(AgentPort)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		d := NewSerialDialer(sock)
		c, err := d.Dial(ctx, AgentPort)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("ping"))
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("session %d: read %q, %v", i, buf, err)
		}
		d.Close()
	}
}

func TestDialAfterCloseFails(t *testing.T) {
	d := NewSerialDialer("/nonexistent")
	d.Close()
	if _, err := d.Dial(context.Background(), AgentPort); err != ErrClosed {
		t.Fatalf("Dial after Close: %v, want ErrClosed", err)
	}
}

func TestFindSerialPort(t *testing.T) {
	root := t.TempDir()
	for port, name := range map[string]string{"vport1p1": "other", "vport2p1": SerialPortName + "\n"} {
		dir := filepath.Join(root, "sys/class/virtio-ports", port)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "name"), []byte(name), 0o644)
	}
	got, err := FindSerialPort(root, SerialPortName)
	if err != nil || got != "/dev/vport2p1" {
		t.Fatalf("FindSerialPort = %q, %v", got, err)
	}
	if _, err := FindSerialPort(root, "missing"); err == nil {
		t.Fatal("FindSerialPort found a port that does not exist")
	}
}
