package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// A privileged pod's spec lists every host block device (unless containerd
// is configured with privileged_without_host_devices = true, see
// docs/containerd.md); hot-plugging the disk that holds the host's root
// file system into a VM read-write would hand the guest the host. Berth
// refuses a block device that backs a mounted host file system: the device
// itself, one of its partitions, or a device stacked on it (device-mapper,
// a loop device's backing disk is not followed), naming the mount.

// mountedDevice is one mount from mountinfo: its device number and where
// it is mounted, and its source (for file systems like btrfs whose mount
// device number is not the block device's).
type mountedDevice struct {
	dev        uint64
	mountPoint string
	source     string
}

// parseMountinfo reads /proc/self/mountinfo's fields 3 (major:minor), 5
// (mount point) and the source after the "-" separator.
func parseMountinfo(r io.Reader) ([]mountedDevice, error) {
	var out []mountedDevice
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		maj, min, ok := strings.Cut(f[2], ":")
		if !ok {
			continue
		}
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		m := mountedDevice{dev: unix.Mkdev(uint32(ma), uint32(mi)), mountPoint: unescapeMountinfo(f[4])}
		for i := 6; i+2 < len(f); i++ {
			if f[i] == "-" {
				m.source = unescapeMountinfo(f[i+2])
				break
			}
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// mountinfo's paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// relatedDevices is dev, its partitions and the devices stacked on them
// (sysfs holders), up to a few levels, from sysRoot ("/" on a host).
func relatedDevices(sysRoot string, dev uint64) map[uint64]string {
	out := map[uint64]string{}
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		b, err := os.ReadFile(filepath.Join(dir, "dev"))
		if err != nil || depth > 4 {
			return
		}
		maj, min, _ := strings.Cut(strings.TrimSpace(string(b)), ":")
		ma, _ := strconv.ParseUint(maj, 10, 32)
		mi, _ := strconv.ParseUint(min, 10, 32)
		d := unix.Mkdev(uint32(ma), uint32(mi))
		if _, seen := out[d]; seen {
			return
		}
		out[d] = filepath.Base(dir)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			// Partitions are subdirectories with a "partition" file.
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
				walk(filepath.Join(dir, e.Name()), depth+1)
			}
		}
		holders, _ := os.ReadDir(filepath.Join(dir, "holders"))
		for _, h := range holders {
			if p, err := filepath.EvalSymlinks(filepath.Join(dir, "holders", h.Name())); err == nil {
				walk(p, depth+1)
			}
		}
	}
	start, err := filepath.EvalSymlinks(filepath.Join(sysRoot, "sys/dev/block", fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))))
	if err == nil {
		walk(start, 0)
	}
	if len(out) == 0 {
		out[dev] = ""
	}
	return out
}

// refuseMountedBlock fails, naming the mount, if path is a block device
// that backs (directly, by a partition or a stacked device) a file system
// mounted on the host. Files and unmounted disks pass.
func refuseMountedBlock(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil // not a block device: HotplugBlock reports a missing path
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mountinfo to check %s: %w", path, err)
	}
	defer f.Close()
	mounts, err := parseMountinfo(f)
	if err != nil {
		return fmt.Errorf("read mountinfo to check %s: %w", path, err)
	}
	return checkNotMounted(path, uint64(st.Rdev), relatedDevices("/", uint64(st.Rdev)), mounts)
}

func checkNotMounted(path string, dev uint64, related map[uint64]string, mounts []mountedDevice) error {
	for _, m := range mounts {
		d := m.dev
		if _, ok := related[d]; !ok && strings.HasPrefix(m.source, "/dev/") {
			var st unix.Stat_t
			if unix.Stat(m.source, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
				d = uint64(st.Rdev)
			}
		}
		if name, ok := related[d]; ok {
			via := ""
			if d != dev && name != "" {
				via = " (through " + name + ")"
			}
			return fmt.Errorf("refusing to hot-plug %s into the VM: it backs the host file system mounted at %s%s; a privileged pod lists every host disk unless containerd has privileged_without_host_devices = true (docs/containerd.md): %w",
				path, m.mountPoint, via, errdefs.ErrPermissionDenied)
		}
	}
	return nil
}
