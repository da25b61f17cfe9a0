package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

const mountinfoText = `22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 253:0 / /srv/my\040data rw - xfs /dev/mapper/vg-data rw
25 22 0:45 / /home rw - btrfs /dev/nonexistent-btrfs rw
`

// fakeSysfs builds /sys/dev/block for sda (8:0) with partitions sda1 (8:1)
// and sda2 (8:2), sdb (8:16) with sdb1 (8:17) held by dm-0 (253:0), and
// sdc (8:32) unused.
func fakeSysfs(t *testing.T) string {
	root := t.TempDir()
	blk := filepath.Join(root, "sys/class/block")
	mk := func(rel, dev string, partition bool) string {
		d := filepath.Join(blk, rel)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "dev"), []byte(dev+"\n"), 0o644)
		if partition {
			os.WriteFile(filepath.Join(d, "partition"), []byte("1\n"), 0o644)
		}
		os.MkdirAll(filepath.Join(root, "sys/dev/block"), 0o755)
		os.Symlink(d, filepath.Join(root, "sys/dev/block", dev))
		return d
	}
	mk("sda", "8:0", false)
	mk("sda/sda1", "8:1", true)
	mk("sda/sda2", "8:2", true)
	mk("sdb", "8:16", false)
	sdb1 := mk("sdb/sdb1", "8:17", true)
	dm := mk("dm-0", "253:0", false)
	os.MkdirAll(filepath.Join(sdb1, "holders"), 0o755)
	os.Symlink(dm, filepath.Join(sdb1, "holders", "dm-0"))
	mk("sdc", "8:32", false)
	return root
}

func TestRefuseBlockDevicesBackingHostMounts(t *testing.T) {
	mounts, err := parseMountinfo(strings.NewReader(mountinfoText))
	if err != nil || len(mounts) != 4 {
		t.Fatalf("parseMountinfo: %d mounts, %v", len(mounts), err)
	}
	if mounts[2].mountPoint != "/srv/my data" {
		t.Errorf("mount point %q: octal escapes not undone", mounts[2].mountPoint)
	}
	sys := fakeSysfs(t)
	for _, tc := range []struct {
		name       string
		dev        uint64
		mountPoint string // "" means allowed
	}{
		{"the root partition", unix.Mkdev(8, 2), "/"},
		{"the disk holding it", unix.Mkdev(8, 0), "/"},
		{"a disk under device-mapper", unix.Mkdev(8, 16), "/srv/my data"},
		{"an unused disk", unix.Mkdev(8, 32), ""},
		{"an unused partition", unix.Mkdev(8, 1), ""},
	} {
		err := checkNotMounted("/dev/x", tc.dev, relatedDevices(sys, tc.dev), mounts)
		switch {
		case tc.mountPoint == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.mountPoint != "" && (!errors.Is(err, errdefs.ErrPermissionDenied) || !strings.Contains(err.Error(), "mounted at "+tc.mountPoint) || !strings.Contains(err.Error(), "privileged_without_host_devices")):
			t.Errorf("%s: %v, want a refusal naming %s and the containerd setting", tc.name, err, tc.mountPoint)
		}
	}
}
