package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The device tests give a container a loop device over a 64 MiB file: the
// container writes a pattern into it with dd, and the host reads the
// pattern back from the file after the container has ended. That proves
// the disk was hot-plugged, reached the container at the right path with
// the right numbers and cgroup rule, was written through, and was released
// by QEMU (the loop device detaches cleanly).

const diskBytes = 64 << 20

// patternOffset is where the container writes: 1 MiB into the disk, away
// from anything a partition scan looks at.
const patternOffset = 1 << 20

// loopDisk is a loop device over a sparse file.
type loopDisk struct {
	file string
	dev  string // /dev/loopN
}

// newLoopDisk attaches a loop device to a fresh 64 MiB file; it is
// detached when the test ends.
func newLoopDisk(t *testing.T) *loopDisk {
	t.Helper()
	f := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, diskBytes); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", f).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	d := &loopDisk{file: f, dev: strings.TrimSpace(string(out))}
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", d.dev).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v: %s", d.dev, err, out)
		}
	})
	return d
}

// pattern is what a test writes; unique per test so a stale file cannot
// pass.
func pattern(t *testing.T) string {
	return fmt.Sprintf("berth-devices-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())
}

// writeScript is the container's command: check the node is a block
// device, write the pattern at patternOffset and flush it to the disk.
func writeScript(dev, pat string) string {
	return fmt.Sprintf("set -e; test -b %[1]s; printf %%s %[2]s | dd of=%[1]s bs=4096 seek=%[3]d conv=notrunc,fsync 2>/dev/null; echo wrote $(stat -c %%t:%%T %[1]s)",
		dev, pat, patternOffset/4096)
}

// checkPattern reads the pattern back from the disk's file on the host.
func (d *loopDisk) checkPattern(t *testing.T, pat string) {
	t.Helper()
	f, err := os.Open(d.file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(pat))
	if _, err := f.ReadAt(got, patternOffset); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte(pat)) {
		t.Fatalf("the host reads %q at offset %d of %s, want %q", got, patternOffset, d.file, pat)
	}
}

// qemuHolds reports whether a QEMU of this test binary has dev open.
func qemuHolds(dev string) bool {
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && target == dev {
			cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(fd)), "cmdline"))
			if bytes.Contains(cmd, []byte("qemu")) && bytes.Contains(cmd, []byte(env.runDir)) {
				return true
			}
		}
	}
	return false
}

// TestDeviceCtrRunLoopDevice: `ctr run --device /dev/loopN`.
func TestDeviceCtrRunLoopDevice(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	d := newLoopDisk(t)
	pat := pattern(t)
	r := ctr(t, "run", "--runtime", berthRuntime, "--rm", "--device", d.dev, busyboxImage, "dev-ctr", "sh", "-c", writeScript(d.dev, pat))
	if r.code != 0 {
		t.Fatalf("ctr run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("container: %s (ctr run took %v)", strings.TrimSpace(r.stdout), r.elapsed)
	if !strings.Contains(r.stdout, "wrote") {
		t.Fatalf("container output %q", r.stdout)
	}
	d.checkPattern(t, pat)
	if qemuHolds(d.dev) {
		t.Errorf("a QEMU still holds %s after the container ended", d.dev)
	}
}

// TestDeviceCtrRunColdPlugRootPort is seed 002 through containerd:
// cold_plug_vfio = "root-port" with no VFIO device present (the setting
// that made the seed's runtime ignore hot-plugged devices), and a loop
// device that must still reach the container. The configuration comes in
// through the runtime's ConfigPath option.
func TestDeviceCtrRunColdPlugRootPort(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	cfg := devicesConfig(t, "cold_plug_vfio = \"root-port\"\nhot_plug_vfio = \"root-port\"\npcie_root_port = 2\n")
	d := newLoopDisk(t)
	pat := pattern(t)
	r := ctr(t, "run", "--runtime", berthRuntime, "--runtime-config-path", cfg, "--rm", "--device", d.dev, busyboxImage, "dev-cold", "sh", "-c", writeScript(d.dev, pat))
	if r.code != 0 {
		t.Fatalf("ctr run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	d.checkPattern(t, pat)
}

// devicesConfig writes the test configuration with a [devices] section.
func devicesConfig(t *testing.T, devices string) string {
	t.Helper()
	base, err := os.ReadFile(env.config)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "devices.toml")
	if err := os.WriteFile(path, []byte(string(base)+"\n[devices]\n"+devices), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDeviceCRIDeviceAsXda: a CRI Device maps the loop device to /dev/xda
// in an app container of a pod.
func TestDeviceCRIDeviceAsXda(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	d := newLoopDisk(t)
	pat := pattern(t)
	pod := c.runPod(t, "devices")
	defer c.removePod(t, pod.id)

	config := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: "xda"},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  []string{"sh", "-c", writeScript("/dev/xda", pat)},
		LogPath:  "xda.log",
		Devices:  []*cri.Device{{ContainerPath: "/dev/xda", HostPath: d.dev, Permissions: "rwm"}},
		Linux: &cri.LinuxContainerConfig{
			SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: pod.config.Linux.SecurityContext.NamespaceOptions},
		},
	}
	resp, err := c.rt.CreateContainer(criCtx(t, 2*time.Minute), &cri.CreateContainerRequest{PodSandboxId: pod.id, Config: config, SandboxConfig: pod.config})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	id := resp.ContainerId
	c.startContainer(t, id)
	deadline := time.Now().Add(2 * time.Minute)
	var st *cri.ContainerStatusResponse
	for {
		st, err = c.rt.ContainerStatus(criCtx(t, time.Minute), &cri.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("ContainerStatus: %v", err)
		}
		if st.Status.State == cri.ContainerState_CONTAINER_EXITED || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	logOut, _ := os.ReadFile(filepath.Join(pod.logDir, "xda.log"))
	if st.Status.State != cri.ContainerState_CONTAINER_EXITED || st.Status.ExitCode != 0 {
		t.Fatalf("container is %v, exit %d; log:\n%s", st.Status.State, st.Status.ExitCode, logOut)
	}
	t.Logf("container log: %s", strings.TrimSpace(string(logOut)))
	// The container has ended, but its disk stays plugged until it is
	// removed (containerd keeps a stopped container's resources); the
	// data is on the host as soon as the container flushed it.
	d.checkPattern(t, pat)
	if _, err := c.rt.RemoveContainer(criCtx(t, time.Minute), &cri.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if qemuHolds(d.dev) {
		t.Errorf("the pod's QEMU still holds %s after RemoveContainer", d.dev)
	}
}
