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

// diskContainer is a CRI container config with disks mapped to /dev/xda,
// /dev/xdb, ...
func diskContainer(pod *criPod, name string, disks []*loopDisk, cmd ...string) *cri.ContainerConfig {
	config := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: name},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  cmd,
		LogPath:  name + ".log",
		Linux: &cri.LinuxContainerConfig{
			SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: pod.config.Linux.SecurityContext.NamespaceOptions},
		},
	}
	for i, d := range disks {
		config.Devices = append(config.Devices, &cri.Device{ContainerPath: fmt.Sprintf("/dev/xd%c", 'a'+i), HostPath: d.dev, Permissions: "rwm"})
	}
	return config
}

// TestDeviceCRIDeviceAsXda: a CRI Device maps the loop device to /dev/xda
// in an app container of a pod. Before it, a container asking for more
// disks than the pod's VM has ports fails, and its hot-plugs are rolled
// back in the running VM: the disks are released and the ports are free
// for the next container.
func TestDeviceCRIDeviceAsXda(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	d := newLoopDisk(t)
	pat := pattern(t)
	pod := c.runPod(t, "devices")
	defer c.removePod(t, pod.id)

	// The default configuration reserves two root ports.
	extra := []*loopDisk{d, newLoopDisk(t), newLoopDisk(t)}
	// CRI creates the task (and Berth plugs the disks) at StartContainer.
	tooMany, err := c.rt.CreateContainer(criCtx(t, 2*time.Minute), &cri.CreateContainerRequest{PodSandboxId: pod.id,
		Config: diskContainer(pod, "too-many", extra, "true"), SandboxConfig: pod.config})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	_, err = c.rt.StartContainer(criCtx(t, 2*time.Minute), &cri.StartContainerRequest{ContainerId: tooMany.ContainerId})
	if err == nil || !strings.Contains(err.Error(), "pcie_root_port") {
		t.Fatalf("StartContainer with 3 disks on 2 ports = %v, want an error naming pcie_root_port", err)
	}
	t.Logf("as expected: %v", err)
	if _, err := c.rt.RemoveContainer(criCtx(t, time.Minute), &cri.RemoveContainerRequest{ContainerId: tooMany.ContainerId}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	for _, x := range extra {
		if qemuHolds(x.dev) {
			t.Errorf("%s still held by the pod's QEMU after the failed create", x.dev)
		}
	}

	resp, err := c.rt.CreateContainer(criCtx(t, 2*time.Minute), &cri.CreateContainerRequest{PodSandboxId: pod.id,
		Config: diskContainer(pod, "xda", []*loopDisk{d}, "sh", "-c", writeScript("/dev/xda", pat)), SandboxConfig: pod.config})
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
	// The container has ended: its disk is unplugged and back with the
	// host, before the kubelet gets round to removing the container.
	d.checkPattern(t, pat)
	eventually(t, 30*time.Second, "the pod's QEMU releases "+d.dev+" after the container exited", func() error {
		if qemuHolds(d.dev) {
			return fmt.Errorf("the pod's QEMU still holds %s", d.dev)
		}
		return nil
	})
	if _, err := c.rt.RemoveContainer(criCtx(t, time.Minute), &cri.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if qemuHolds(d.dev) {
		t.Errorf("the pod's QEMU still holds %s after RemoveContainer", d.dev)
	}
}

// TestDeviceCtrRunEveryPortKind hot-plugs the disk into each kind of port
// a configuration can reserve: a root port, a PCIe switch downstream port
// and a PCI bridge slot. The guest finds it by PCI path in each case.
func TestDeviceCtrRunEveryPortKind(t *testing.T) {
	containerd(t)
	for _, tc := range []struct{ name, devices string }{
		{"switch", "pcie_root_port = 0\npcie_switch_port = 1\n"},
		{"bridge", "pcie_root_port = 0\npci_bridges = 1\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer assertNoLeaks(t)
			cfg := devicesConfig(t, tc.devices)
			d := newLoopDisk(t)
			pat := pattern(t)
			r := ctr(t, "run", "--runtime", berthRuntime, "--runtime-config-path", cfg, "--rm", "--device", d.dev, busyboxImage, "dev-"+tc.name, "sh", "-c", writeScript(d.dev, pat))
			if r.code != 0 {
				t.Fatalf("ctr run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			d.checkPattern(t, pat)
		})
	}
}

// TestDeviceFailedHotplugRollsBack asks for three disks with two root
// ports through ctr: the third cannot be placed, the container fails with
// an error naming devices.pcie_root_port, and nothing is left (the VM
// booted for the container goes too, so this checks the error and the
// cleanup; TestDeviceCRIDeviceAsXda checks the rollback inside a VM that
// stays up).
func TestDeviceFailedHotplugRollsBack(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	cfg := devicesConfig(t, "pcie_root_port = 2\n")
	disks := []*loopDisk{newLoopDisk(t), newLoopDisk(t), newLoopDisk(t)}
	args := []string{"run", "--runtime", berthRuntime, "--runtime-config-path", cfg, "--rm"}
	for _, d := range disks {
		args = append(args, "--device", d.dev)
	}
	args = append(args, busyboxImage, "dev-rollback", "true")
	r := ctr(t, args...)
	defer cleanupTask(t, "dev-rollback")
	if r.code == 0 {
		t.Fatal("three disks on two root ports: ctr run succeeded")
	}
	if !strings.Contains(r.stderr, "pcie_root_port") {
		t.Errorf("error does not name devices.pcie_root_port:\n%s", r.stderr)
	}
	for _, d := range disks {
		if qemuHolds(d.dev) {
			t.Errorf("%s is still held by QEMU after the failed create", d.dev)
		}
	}
}

// TestDeviceCtrRunBlockMount: a mount whose source is a host block device
// (an ext4 file system on the loop device) is hot-plugged and mounted in
// the container from the guest's disk, not shared over virtio-fs. The
// container writes a file and exits without syncing; the host reads it out
// of the image afterwards: the guest syncs before it answers Shutdown, and
// only then is QEMU told to quit.
func TestDeviceCtrRunBlockMount(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	d := newLoopDisk(t)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", d.dev).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	pat := pattern(t)
	r := ctr(t, "run", "--runtime", berthRuntime, "--rm",
		"--mount", "type=ext4,src="+d.dev+",dst=/data,options=rw",
		busyboxImage, "dev-mount", "sh", "-c", "set -e; grep ' /data ' /proc/mounts; echo "+pat+" > /data/hello")
	if r.code != 0 {
		t.Fatalf("ctr run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("container: %s", strings.TrimSpace(r.stdout))
	if !strings.Contains(r.stdout, "/dev/vd") {
		t.Errorf("/data is not mounted from a guest disk: %s", r.stdout)
	}
	out, err := exec.Command("debugfs", "-R", "cat /hello", d.file).CombinedOutput()
	if err != nil || !strings.Contains(string(out), pat) {
		t.Fatalf("debugfs cat /hello: %v: %s", err, out)
	}
}

// TestDeviceBerthRun: `berth run --device HOST:/dev/xda`.
func TestDeviceBerthRun(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	d := newLoopDisk(t)
	pat := pattern(t)
	r := berth(t, "", "run", "--rootfs", env.rootfs, "--device", d.dev+":/dev/xda", "--", "sh", "-c", writeScript("/dev/xda", pat))
	if r.code != 0 {
		t.Fatalf("berth run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	d.checkPattern(t, pat)
	if r := berth(t, "", "run", "--rootfs", env.rootfs, "--device", "/etc/hostname", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "not a device node") {
		t.Errorf("--device on a regular file: exit %d, stderr %s", r.code, r.stderr)
	}
}

// TestDeviceReadOnlyPermissions: a device given with permissions "r" is
// plugged read-only, so the guest kernel itself refuses writes (not only
// the container's device cgroup), and the host file stays untouched.
func TestDeviceReadOnlyPermissions(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	d := newLoopDisk(t)
	script := "dd if=/dev/xda of=/dev/null bs=4096 count=1 2>/dev/null && echo read-ok; " +
		"for ro in /sys/block/vd*/ro; do echo guest-ro=$(cat $ro); done; " +
		"if printf x | dd of=/dev/xda conv=fsync 2>/dev/null; then echo write-ok; else echo write-refused; fi"
	r := berth(t, "", "run", "--rootfs", env.rootfs, "--device", d.dev+":/dev/xda:r", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("berth run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("container: %s", strings.Join(strings.Fields(r.stdout), " "))
	for _, want := range []string{"read-ok", "guest-ro=1", "write-refused"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("container output lacks %q:\n%s", want, r.stdout)
		}
	}
}
