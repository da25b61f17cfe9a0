package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/guest"
)

// startGuestRootPod runs a sleeping busybox container id with [debug]
// guest_exec on, for guestRoot, and returns that configuration; the
// caller removes it (cleanupTask) before its leak check.
func startGuestRootPod(t *testing.T, id string) (cfg string) {
	t.Helper()
	cfg = hostileConfig(t)
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--runtime-config-path", cfg, busyboxImage, id, "sleep", "1000")
	return cfg
}

// TestGuestPID1ReapsOrphans: the guest's PID 1 (the C reaper of
// internal/agent/pid1) is not the agent service but its parent, and a
// process orphaned in the guest's root PID namespace is re-parented to it
// and reaped when it exits, leaving no zombie behind.
func TestGuestPID1ReapsOrphans(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "pid1-reaps"
	cfg := startGuestRootPod(t, id)
	defer cleanupTask(t, id)

	// The debug exec shell is a child of the service ($PPID). Its inner
	// shell starts a sleep and exits at once, orphaning it.
	r := guestRoot(t, cfg, id, id, `
		ppid() { $B awk '/^PPid:/ { print $2 }' /proc/$1/status; }
		echo "service $PPID parent $(ppid $PPID)"
		pid=$($B sh -c "$B sleep 2 </dev/null >/dev/null 2>&1 & echo \$!")
		$B sleep 0.5
		echo "orphan parent $(ppid $pid)"
		$B sleep 3
		if [ -e /proc/$pid ]; then echo "orphan left: $($B awk '/^State:/ { print $2 }' /proc/$pid/status)"; else echo "orphan reaped"; fi`)
	if r.code != 0 {
		t.Fatalf("guest script: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	var service, parent int
	if _, err := fmt.Sscanf(r.stdout, "service %d parent %d", &service, &parent); err != nil || service == 1 || parent != 1 {
		t.Errorf("want the agent service to be a child of PID 1, not PID 1 itself; got %q", r.stdout)
	}
	if !strings.Contains(r.stdout, "orphan parent 1\n") {
		t.Errorf("the orphan was not re-parented to PID 1: %q", r.stdout)
	}
	if !strings.Contains(r.stdout, "orphan reaped") {
		t.Errorf("PID 1 did not reap the orphan after it exited: %q", r.stdout)
	}
}

// TestGuestRootImageIsReadOnlyToTheGuest: with the root image (guest.root
// "auto" on q35 boots it), the guest's root is the erofs image on
// virtio-pmem, mounted with DAX; root in the guest writing the pmem device
// changes neither what the guest reads back nor the host's file, which
// every VM of the host maps, and the VM keeps running.
func TestGuestRootImageIsReadOnlyToTheGuest(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	img := filepath.Join(env.stateDir, "guest", guest.RootImageName)
	if _, err := os.Stat(img); err != nil {
		t.Skipf("the guest image has no root image (%v): its kernel lacks %v", err, guest.RootImageOptions)
	}
	before := fileDigest(t, img)
	const id = "root-image-ro"
	cfg := startGuestRootPod(t, id)
	defer cleanupTask(t, id)

	r := guestRoot(t, cfg, id, id, `
		$B awk '$2 == "/" { print "root", $3, $4 }' /proc/mounts
		first() { $B dd if=/dev/pmem0 bs=4096 count=256 iflag=direct 2>/dev/null | $B md5sum | $B cut -d" " -f1; }
		echo "before $(first)"
		$B dd if=/dev/urandom of=/dev/pmem0 bs=4096 count=256 oflag=direct conv=fsync 2>/dev/null; echo "dd exit $?"
		echo "after $(first)"
		$B mount -o remount,rw / 2>/dev/null
		$B awk '$2 == "/" { print "remounted", $3, $4 }' /proc/mounts
		$B touch /berth/x 2>/dev/null; echo "touch exit $?"`)
	if r.code != 0 {
		t.Fatalf("guest script: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("guest:\n%s", r.stdout)
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		k, v, _ := strings.Cut(l, " ")
		lines[k] = v
	}
	if root := lines["root"]; !strings.HasPrefix(root, "erofs ro") || !strings.Contains(root, "dax=always") {
		t.Errorf("guest root is %q, want erofs mounted ro with dax=always", root)
	}
	if lines["before"] == "" || lines["after"] != lines["before"] {
		t.Errorf("the guest changed its view of the root device: %q -> %q", lines["before"], lines["after"])
	}
	if !strings.HasPrefix(lines["remounted"], "erofs ro") || lines["touch"] == "exit 0" {
		t.Errorf("the guest's root is writable: after a read-write remount %q, touch %s", lines["remounted"], lines["touch"])
	}
	if after := fileDigest(t, img); after != before {
		t.Fatalf("the host's root image %s changed under a guest's writes", img)
	}
	if r := guestRoot(t, cfg, id, id, `echo alive`); r.code != 0 || strings.TrimSpace(r.stdout) != "alive" {
		t.Errorf("the VM did not survive the writes: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
}

// fileDigest is the SHA-256 of a host file.
func fileDigest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestGuestKernelHasLoopDevices: the guest kernel makes loop devices on
// demand (guest/kernel: none at boot), so what privileged workloads do
// with them under runc works in the guest: root attaches a file, reads
// its bytes back through the device and detaches it.
func TestGuestKernelHasLoopDevices(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "loop-devices"
	cfg := startGuestRootPod(t, id)
	defer cleanupTask(t, id)
	r := guestRoot(t, cfg, id, id, `
		img=/run/loop-img
		$B dd if=/dev/zero of=$img bs=1024 count=1024 2>/dev/null
		printf berth-loop | $B dd of=$img conv=notrunc 2>/dev/null
		dev=$($B losetup -f); echo "free=$dev"
		$B losetup $dev $img; echo "attach=$?"
		echo "read=$($B head -c 10 $dev)"
		$B losetup -d $dev; echo "detach=$?"`)
	if r.code != 0 {
		t.Fatalf("guest script: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"free=/dev/loop0\n", "attach=0\n", "read=berth-loop\n", "detach=0"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("no %q in:\n%s%s", strings.TrimSpace(want), r.stdout, r.stderr)
		}
	}
}
