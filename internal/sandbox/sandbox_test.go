package sandbox

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestDirKeepsSocketPathsShort(t *testing.T) {
	long := strings.Repeat("a", 64) // CRI ids are 64 hex digits
	d := Dir("/run/berth", long)
	if got := len(filepath.Join(d, fsSocketName)); got > maxSocketPath {
		t.Fatalf("socket path of a 64-char id is %d bytes, over %d", got, maxSocketPath)
	}
	if Dir("/run/berth", long) != d || Dir("/run/berth", long+"b") == d {
		t.Fatal("Dir must be stable per id and differ between ids")
	}
	if got := Dir("/run/berth", "short-id"); got != "/run/berth/sandboxes/short-id" {
		t.Fatalf("short ids are used as they are, got %s", got)
	}
}

func TestProcessAlive(t *testing.T) {
	if !processAlive(os.Getpid()) {
		t.Fatal("this process is not alive?")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip(err)
	}
	if processAlive(cmd.Process.Pid) {
		t.Fatalf("exited pid %d reported alive", cmd.Process.Pid)
	}
	// A zombie is dead for our purposes: start a child and do not reap it.
	z := exec.Command("true")
	if err := z.Start(); err != nil {
		t.Skip(err)
	}
	defer z.Wait()
	for i := 0; i < 100; i++ {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(z.Process.Pid), "stat"))
		if strings.Contains(string(b), ") Z") {
			break
		}
		exec.Command("sleep", "0.01").Run()
	}
	if processAlive(z.Process.Pid) {
		t.Fatalf("zombie pid %d reported alive", z.Process.Pid)
	}
}

func TestCleanupStaleSkipsLiveOwners(t *testing.T) {
	run := t.TempDir()
	live := Dir(run, "live")
	dead := Dir(run, "dead")
	for _, d := range []string{live, dead} {
		os.MkdirAll(d, 0o700)
	}
	os.WriteFile(filepath.Join(live, ownerFileName), []byte(strconv.Itoa(os.Getpid())), 0o600)
	cmd := exec.Command("true")
	cmd.Run()
	os.WriteFile(filepath.Join(dead, ownerFileName), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
	if n := CleanupStale(run); n != 1 {
		t.Fatalf("removed %d sandboxes, want 1", n)
	}
	if _, err := os.Stat(live); err != nil {
		t.Error("a sandbox with a live owner was removed")
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Error("a sandbox with a dead owner was kept")
	}
	if err := RemoveOrphan(run, "live"); err != ErrOwnerAlive {
		t.Errorf("RemoveOrphan of a live sandbox: %v, want ErrOwnerAlive", err)
	}
}

func TestTransportKind(t *testing.T) {
	if transportKind("vsock") != "vsock" || transportKind("virtio-serial") != "virtio-serial" {
		t.Fatal("explicit settings are taken as they are")
	}
	want := "virtio-serial"
	if _, err := os.Stat(vhostVsockDevice); err == nil {
		want = "vsock"
	}
	if got := transportKind("auto"); string(got) != want {
		t.Fatalf("auto = %s, want %s on this host", got, want)
	}
	if c := guestCID("a"); c < 3 || c == guestCID("b") {
		t.Fatalf("guestCID: %d", c)
	}
}
