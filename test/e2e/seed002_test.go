package e2e

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/vmm"
)

// TestSeed002ColdPlugRootPortHotPluggedXda is seed 002's regression test,
// on a real VM: VFIO cold-plug is configured (cold_plug_vfio =
// "root-port") but no VFIO device is present, and the container is given
// a block device at /dev/xda, hot-plugged after boot. The seed's runtime
// handed the container only its cold-plugged devices (none), and the
// container failed with "Could not open /dev/xda: No such device or
// address". Here /dev/xda must exist, be the hot-plugged disk, and take a
// write that the host reads back.
//
// It drives the sandbox package directly (what the shim does for a pod),
// with the configuration loaded by the production loader.
func TestSeed002ColdPlugRootPortHotPluggedXda(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cfg, err := config.Load(devicesConfig(t, "cold_plug_vfio = \"root-port\"\n"), config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	d := newLoopDisk(t)
	var st unix.Stat_t
	if err := unix.Stat(d.dev, &st); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// TCG works on every host; the accelerator does not matter here.
	sb, err := sandbox.Create(ctx, cfg, sandbox.Options{ID: "seed002", Driver: qemu.Driver{}, Accel: vmm.TCG})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(context.Background())

	pat := pattern(t)
	spec := oci.DefaultSpec("/", oci.ProcessOptions{Args: []string{"sh", "-c", writeScript("/dev/xda", pat) + "; ls -l /dev/xda"}})
	major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	// What containerd's CRI puts in the spec for a Device with host path
	// /dev/loopN and container path /dev/xda: the host's numbers only.
	mode := os.FileMode(0o660)
	spec.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/xda", Type: "b", Major: major, Minor: minor, FileMode: &mode}}
	spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices,
		specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "rwm"})

	var stdout, stderr bytes.Buffer
	p, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "xda", Spec: spec, RootfsDir: env.rootfs,
		IO: sandbox.IO{Stdout: &stdout, Stderr: &stderr}})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	exit, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if exit.Code != 0 {
		t.Fatalf("container exit %d\nstdout: %s\nstderr: %s", exit.Code, stdout.String(), stderr.String())
	}
	t.Logf("container: %s", strings.TrimSpace(stdout.String()))
	if err := sb.DeleteContainer(ctx, "xda"); err != nil {
		t.Fatalf("DeleteContainer: %v", err)
	}
	// Deleting the container unplugged the disk: QEMU let go of it while
	// the VM still runs.
	if qemuHolds(d.dev) {
		t.Errorf("QEMU still holds %s after DeleteContainer", d.dev)
	}
	d.checkPattern(t, pat)
	if err := sb.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}
