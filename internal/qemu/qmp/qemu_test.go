package qmp

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRealQEMU talks to an actual QEMU with no machine at all (-M none),
// which starts in milliseconds and needs neither KVM nor a kernel.
func TestRealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not in PATH; this test needs a real QEMU")
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-M", "none", "-display", "none", "-nodefaults",
		"-qmp", "unix:"+sock+",server=on,wait=off", "-S")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var c *Client
	for c == nil {
		c, err = Dial(ctx, sock)
		if err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("qemu exited before QMP came up: %v: %s", err, stderr.String())
		case <-ctx.Done():
			t.Fatalf("no QMP on %s: %v", sock, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	defer c.Close()

	if v := c.Version(); v.Major == 0 {
		t.Errorf("greeting carried no version: %+v", v)
	}

	var ver struct {
		QEMU    struct{ Major, Minor, Micro int }
		Package string
	}
	if err := c.Execute(ctx, "query-version", nil, &ver); err != nil {
		t.Fatal(err)
	}
	if ver.QEMU.Major != c.Version().Major || ver.QEMU.Minor != c.Version().Minor {
		t.Errorf("query-version %+v disagrees with greeting %+v", ver.QEMU, c.Version())
	}
	t.Logf("QEMU %d.%d.%d (%s)", ver.QEMU.Major, ver.QEMU.Minor, ver.QEMU.Micro, ver.Package)

	var st struct {
		Status  string
		Running bool
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "prelaunch" || st.Running {
		t.Errorf("query-status = %+v, want prelaunch and not running (-S)", st)
	}

	// A QEMU error reply decodes into *Error.
	err = c.Execute(ctx, "device_del", map[string]string{"id": "no-such-device"}, nil)
	var qerr *Error
	if !errors.As(err, &qerr) || !strings.Contains(qerr.Desc, "no-such-device") {
		t.Errorf("device_del of a missing device: %v", err)
	}

	sub := c.Subscribe("SHUTDOWN", nil)
	defer sub.Cancel()
	// QEMU may close the socket before or after its reply reaches us.
	if err := c.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrClosed) {
		t.Fatalf("quit: %v", err)
	}
	ev, err := sub.Wait(ctx)
	if err != nil {
		t.Fatalf("no SHUTDOWN event after quit: %v", err)
	}
	if !strings.Contains(string(ev.Data), "host-qmp-quit") {
		t.Errorf("SHUTDOWN data = %s", ev.Data)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("qemu exit after quit: %v: %s", err, stderr.String())
		}
		exited <- nil // for the cleanup
	case <-ctx.Done():
		t.Fatal("qemu still running after quit")
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("client did not notice the closed socket")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("QEMU left its QMP socket behind after a clean quit: %v", err)
	}
}
