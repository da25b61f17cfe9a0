package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// fakeGuest is a guest sysfs and devtmpfs under a temp dir.
type fakeGuest struct {
	t  *testing.T
	fs deviceFS
}

func newFakeGuest(t *testing.T) *fakeGuest {
	root := t.TempDir()
	g := &fakeGuest{t: t, fs: deviceFS{sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}}
	g.mkdir("sys/devices/pci0000:00/0000:00:01.0") // something else on the root bus
	g.mkdir("dev")
	return g
}

func (g *fakeGuest) mkdir(p string) string {
	full := filepath.Join(filepath.Dir(g.fs.sys), p)
	if err := os.MkdirAll(full, 0o755); err != nil {
		g.t.Fatal(err)
	}
	return full
}

// disk adds a virtio disk at pciDirs (root-bus first) named name with
// numbers dev ("254:16").
func (g *fakeGuest) disk(pciDirs, name, dev string) {
	dir := g.mkdir(filepath.Join("sys/devices/pci0000:00", pciDirs, "virtio3/block", name))
	// sysfs shows a device's dev file whole or not at all: write it
	// aside and rename it in, or the waiter may read it half written.
	if err := os.WriteFile(filepath.Join(dir, ".dev"), []byte(dev+"\n"), 0o644); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, ".dev"), filepath.Join(dir, "dev")); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(g.fs.dev, name), nil, 0o644); err != nil {
		g.t.Fatal(err)
	}
}

func TestFindDiskByPCIPath(t *testing.T) {
	g := newFakeGuest(t)
	// Two disks, probed in the "wrong" order: vda is the one in the
	// later port. Only the PCI path tells them apart.
	g.disk("0000:00:10.0/0000:01:00.0", "vdb", "254:16")
	g.disk("0000:00:11.0/0000:02:00.0", "vda", "254:0")
	g.disk("0000:00:12.0/0000:03:00.0/0000:04:01.0/0000:06:00.0", "vdc", "254:32")
	for path, want := range map[string]resolved{
		"10/00":       {name: "vdb", major: 254, minor: 16},
		"11/00":       {name: "vda", major: 254, minor: 0},
		"12/00/01/00": {name: "vdc", major: 254, minor: 32},
	} {
		r, err := g.fs.waitDevice(context.Background(), api.DeviceKind_DEVICE_BLOCK, path, time.Second)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if r.name != want.name || r.major != want.major || r.minor != want.minor {
			t.Errorf("%s: got %+v, want %+v", path, r, want)
		}
	}
}

func TestWaitDeviceWaitsForHotplug(t *testing.T) {
	g := newFakeGuest(t)
	go func() {
		time.Sleep(100 * time.Millisecond)
		g.disk("0000:00:10.0/0000:01:00.0", "vda", "254:0")
	}()
	start := time.Now()
	r, err := g.fs.waitDevice(context.Background(), api.DeviceKind_DEVICE_BLOCK, "10/00", 5*time.Second)
	if err != nil || r.name != "vda" {
		t.Fatalf("got %+v, %v", r, err)
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Error("returned before the device appeared")
	}
	_, err = g.fs.waitDevice(context.Background(), api.DeviceKind_DEVICE_BLOCK, "11/00", 50*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("absent device: %v", err)
	}
	if _, err := g.fs.waitDevice(context.Background(), api.DeviceKind_DEVICE_BLOCK, "1/00", time.Second); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("malformed path should fail at once: %v", err)
	}
}

func i64(v int64) *int64 { return &v }

func TestApplyDevicesRewritesSpec(t *testing.T) {
	g := newFakeGuest(t)
	g.disk("0000:00:10.0/0000:01:00.0", "vda", "254:0")
	g.disk("0000:00:11.0/0000:02:00.0", "vdb", "254:16")
	g.mkdir("sys/devices/pci0000:00/0000:00:12.0/0000:03:00.0")
	spec := &specs.Spec{
		Mounts: []specs.Mount{{Destination: "/proc"}, {Destination: "/data", Type: "bind", Source: "/run/host/dev/loop4"}},
		Linux: &specs.Linux{
			Devices: []specs.LinuxDevice{
				{Path: "/dev/xda", Type: "b", Major: 7, Minor: 3},
				{Path: "/dev/vfio/12", Type: "c", Major: 243, Minor: 0},
			},
			Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
				{Allow: false, Access: "rwm"},
				{Allow: true, Type: "b", Major: i64(7), Minor: i64(3), Access: "rwm"},
				{Allow: true, Type: "b", Major: i64(7), Minor: i64(4), Access: "r"},
				{Allow: true, Type: "c", Major: i64(243), Minor: i64(0), Access: "rwm"},
				{Allow: true, Type: "c", Major: i64(1), Minor: i64(3), Access: "rwm"},
			}},
		},
	}
	devs := []*api.Device{
		{Kind: api.DeviceKind_DEVICE_BLOCK, PciPath: "10/00", ContainerPath: "/dev/xda", HostMajor: 7, HostMinor: 3},
		{Kind: api.DeviceKind_DEVICE_BLOCK, PciPath: "11/00", IsMount: true, MountIndex: 1, HostMajor: 7, HostMinor: 4},
		{Kind: api.DeviceKind_DEVICE_VFIO, PciPath: "12/00", ContainerPath: "/dev/vfio/12", HostMajor: 243, VfioMode: "guest-kernel"},
	}
	if err := applyDevices(context.Background(), g.fs, spec, devs); err != nil {
		t.Fatal(err)
	}
	if d := spec.Linux.Devices; len(d) != 1 || d[0].Path != "/dev/xda" || d[0].Major != 254 || d[0].Minor != 0 || d[0].Type != "b" {
		t.Errorf("devices: %+v, want only /dev/xda as 254:0", d)
	}
	if spec.Mounts[1].Source != "/dev/vdb" {
		t.Errorf("mount source %q, want /dev/vdb", spec.Mounts[1].Source)
	}
	rules := spec.Linux.Resources.Devices
	want := [][2]int64{{-1, -1}, {254, 0}, {254, 16}, {1, 3}}
	if len(rules) != len(want) {
		t.Fatalf("rules: %d, want %d: %+v", len(rules), len(want), rules)
	}
	for i, w := range want {
		r := rules[i]
		if w[0] < 0 {
			if r.Major != nil {
				t.Errorf("rule %d: %+v", i, r)
			}
			continue
		}
		if *r.Major != w[0] || *r.Minor != w[1] {
			t.Errorf("rule %d is %d:%d, want %d:%d", i, *r.Major, *r.Minor, w[0], w[1])
		}
	}
}

// TestApplyDevicesAddsMissingEntry: a disk whose entry the spec lacks (a
// caller that only set a cgroup rule) still gets a node.
func TestApplyDevicesAddsMissingEntry(t *testing.T) {
	g := newFakeGuest(t)
	g.disk("0000:00:10.0/0000:01:00.0", "vda", "254:0")
	spec := &specs.Spec{Linux: &specs.Linux{}}
	err := applyDevices(context.Background(), g.fs, spec, []*api.Device{{Kind: api.DeviceKind_DEVICE_BLOCK, PciPath: "10/00", ContainerPath: "/dev/xda"}})
	if err != nil || len(spec.Linux.Devices) != 1 || spec.Linux.Devices[0].Major != 254 {
		t.Fatalf("%v: %+v", err, spec.Linux.Devices)
	}
}
