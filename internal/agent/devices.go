package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// Devices the host hot-plugs are found by PCI path: the slot on the root
// bus, then the slot behind each bridge or port. The kernel names disks in
// probe order (vda, vdb, ...), which depends on timing and on what was
// plugged before; a PCI path depends only on where the host put the
// device. Names are read from sysfs, never guessed.

// defaultDeviceTimeout bounds the wait for a hot-plugged device. ACPI
// hot-plug and the virtio probe take ~0.1 s with KVM; a TCG guest on a
// busy host can take seconds.
const defaultDeviceTimeout = 20 * time.Second

// devicePollInterval is how often sysfs is looked at while waiting. The
// device appears once; polling a few directories costs nothing.
const devicePollInterval = 10 * time.Millisecond

// deviceFS is where the agent looks for devices; tests point it at fake
// trees.
type deviceFS struct {
	sys string // mount point of sysfs, "/sys"
	dev string // devtmpfs, "/dev"
}

var realDeviceFS = deviceFS{sys: "/sys", dev: "/dev"}

var pciSlotRE = regexp.MustCompile(`^[0-9a-f]{2}$`)

// errNotYet: the device has not appeared (yet).
var errNotYet = errors.New("not present")

// pciDir walks a PCI path under /sys/devices/pci0000:00 and returns the
// device's directory.
func (fsys deviceFS) pciDir(pciPath string) (string, error) {
	parts := strings.Split(pciPath, "/")
	for _, p := range parts {
		if !pciSlotRE.MatchString(p) {
			return "", fmt.Errorf("PCI path %q: bad slot %q: %w", pciPath, p, errdefs.ErrInvalidArgument)
		}
	}
	dir := filepath.Join(fsys.sys, "devices", "pci0000:00")
	for _, p := range parts {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return "", fmt.Errorf("%s: %w", dir, errNotYet)
		}
		found := ""
		for _, e := range ents {
			// Children are named domain:bus:slot.function, e.g.
			// 0000:01:00.0; the bus number is the firmware's or the
			// kernel's choice, the slot is ours.
			n := e.Name()
			if len(n) == 12 && n[4] == ':' && n[7] == ':' && n[8:10] == p && n[10:] == ".0" {
				found = n
				break
			}
		}
		if found == "" {
			return "", fmt.Errorf("no device at slot %s under %s: %w", p, dir, errNotYet)
		}
		dir = filepath.Join(dir, found)
	}
	return dir, nil
}

// blockOf finds the disk of a virtio-blk PCI device:
// <pci dir>/virtio<N>/block/<name>/dev holds "major:minor".
func (fsys deviceFS) blockOf(pciDir string) (name string, major, minor int64, err error) {
	matches, _ := filepath.Glob(filepath.Join(pciDir, "virtio*", "block", "*", "dev"))
	if len(matches) == 0 {
		return "", 0, 0, fmt.Errorf("no block device under %s: %w", pciDir, errNotYet)
	}
	b, err := os.ReadFile(matches[0])
	if err != nil {
		return "", 0, 0, fmt.Errorf("%s: %w", matches[0], errNotYet)
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	major, err1 := strconv.ParseInt(maj, 10, 64)
	minor, err2 := strconv.ParseInt(min, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return "", 0, 0, fmt.Errorf("%s holds %q, not major:minor", matches[0], b)
	}
	name = filepath.Base(filepath.Dir(matches[0]))
	// The node in devtmpfs is created by the kernel right after the
	// sysfs entry; the container's node is made from the numbers, but a
	// mount source needs the guest's node to exist.
	if _, err := os.Stat(filepath.Join(fsys.dev, name)); err != nil {
		return "", 0, 0, fmt.Errorf("%s: %w", filepath.Join(fsys.dev, name), errNotYet)
	}
	return name, major, minor, nil
}

// resolved is a device as the guest sees it.
type resolved struct {
	name         string
	major, minor int64
	sysPath      string
}

// waitDevice polls until the device at pciPath is ready.
func (fsys deviceFS) waitDevice(ctx context.Context, kind api.DeviceKind, pciPath string, timeout time.Duration) (resolved, error) {
	if timeout <= 0 {
		timeout = defaultDeviceTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		r, err := fsys.lookup(kind, pciPath)
		if err == nil || !errors.Is(err, errNotYet) {
			return r, err
		}
		select {
		case <-ctx.Done():
			return resolved{}, fmt.Errorf("device at PCI path %s did not appear within %s (%v): %w", pciPath, timeout, err, context.DeadlineExceeded)
		case <-time.After(devicePollInterval):
		}
	}
}

func (fsys deviceFS) lookup(kind api.DeviceKind, pciPath string) (resolved, error) {
	dir, err := fsys.pciDir(pciPath)
	if err != nil {
		return resolved{}, err
	}
	switch kind {
	case api.DeviceKind_DEVICE_BLOCK:
		name, maj, min, err := fsys.blockOf(dir)
		if err != nil {
			return resolved{}, err
		}
		return resolved{name: name, major: maj, minor: min, sysPath: dir}, nil
	case api.DeviceKind_DEVICE_VFIO:
		return resolved{name: filepath.Base(dir), sysPath: dir}, nil
	}
	return resolved{}, fmt.Errorf("device kind %v: %w", kind, errdefs.ErrInvalidArgument)
}

// bindVFIO hands a guest PCI function to vfio-pci and returns its group
// node, /dev/vfio/<group>. The guest needs the vfio-pci driver and an IOMMU
// (the group link exists only with one).
func (fsys deviceFS) bindVFIO(dir string) (group string, major, minor int64, err error) {
	bdf := filepath.Base(dir)
	if err := os.WriteFile(filepath.Join(dir, "driver_override"), []byte("vfio-pci"), 0); err != nil {
		return "", 0, 0, fmt.Errorf("set driver_override of %s: %w", bdf, err)
	}
	if drv, err := os.Readlink(filepath.Join(dir, "driver")); err == nil && path.Base(drv) != "vfio-pci" {
		if err := os.WriteFile(filepath.Join(dir, "driver", "unbind"), []byte(bdf), 0); err != nil {
			return "", 0, 0, fmt.Errorf("unbind %s from %s: %w", bdf, path.Base(drv), err)
		}
	}
	if _, err := os.Readlink(filepath.Join(dir, "driver")); err != nil {
		if err := os.WriteFile(filepath.Join(fsys.sys, "bus", "pci", "drivers_probe"), []byte(bdf), 0); err != nil {
			return "", 0, 0, fmt.Errorf("bind %s to vfio-pci (is the vfio_pci module in the guest image?): %w", bdf, err)
		}
	}
	g, err := os.Readlink(filepath.Join(dir, "iommu_group"))
	if err != nil {
		return "", 0, 0, fmt.Errorf("%s has no IOMMU group in the guest (vfio_mode = \"vfio\" needs a guest IOMMU; use \"guest-kernel\"): %w", bdf, errdefs.ErrFailedPrecondition)
	}
	group = path.Base(g)
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(fsys.dev, "vfio", group), &st); err != nil {
		return "", 0, 0, fmt.Errorf("/dev/vfio/%s: %w", group, err)
	}
	return group, int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev)), nil
}

// WaitDevice waits for a hot-plugged device and reports it.
func (s *Service) WaitDevice(ctx context.Context, req *api.WaitDeviceRequest) (*api.WaitDeviceResponse, error) {
	r, err := s.devfs().waitDevice(ctx, req.Kind, req.PciPath, time.Duration(req.TimeoutMs)*time.Millisecond)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &api.WaitDeviceResponse{Name: r.name, Major: r.major, Minor: r.minor, SysPath: r.sysPath}, nil
}

func (s *Service) devfs() deviceFS {
	if s.opts.DeviceFS != nil {
		return *s.opts.DeviceFS
	}
	return realDeviceFS
}

type devNum struct{ major, minor int64 }

// applyDevices waits for every device the host plugged for a container and
// rewrites the spec to the guest's view before libcontainer sees it:
//
//   - a linux.devices entry for a disk keeps its path (/dev/xda) and type
//     and takes the guest disk's major:minor, so libcontainer creates the
//     node in the container with the right numbers;
//   - linux.resources.devices rules naming the host's numbers are rewritten
//     to the guest's, so the device cgroup allows the disk it was meant to
//     allow (and nothing else);
//   - a mount whose source was a host disk gets the guest node as source;
//   - VFIO: in guest-kernel mode the /dev/vfio/<group> entry and its rules
//     are dropped (the guest driver owns the device); in vfio mode the
//     function is bound to vfio-pci and the entry points at the guest's
//     group node.
func applyDevices(ctx context.Context, fsys deviceFS, spec *specs.Spec, devices []*api.Device) error {
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	remap := map[devNum]devNum{}
	drop := map[devNum]bool{}
	dropPaths := map[string]bool{}
	for _, d := range devices {
		r, err := fsys.waitDevice(ctx, d.Kind, d.PciPath, 0)
		if err != nil {
			return fmt.Errorf("device for %s: %w", describeDevice(d), err)
		}
		host := devNum{d.HostMajor, d.HostMinor}
		switch d.Kind {
		case api.DeviceKind_DEVICE_BLOCK:
			guest := devNum{r.major, r.minor}
			remap[host] = guest
			if d.IsMount {
				if int(d.MountIndex) >= len(spec.Mounts) {
					return fmt.Errorf("device for mount %d: the spec has %d mounts: %w", d.MountIndex, len(spec.Mounts), errdefs.ErrInvalidArgument)
				}
				spec.Mounts[d.MountIndex].Source = filepath.Join("/dev", r.name)
				continue
			}
			setDeviceEntry(spec, d.ContainerPath, "b", d.ContainerPath, guest)
		case api.DeviceKind_DEVICE_VFIO:
			if d.VfioMode != "vfio" {
				drop[host] = true
				dropPaths[d.ContainerPath] = true
				continue
			}
			group, maj, min, err := fsys.bindVFIO(r.sysPath)
			if err != nil {
				return err
			}
			guest := devNum{maj, min}
			remap[host] = guest
			setDeviceEntry(spec, d.ContainerPath, "c", "/dev/vfio/"+group, guest)
		default:
			return fmt.Errorf("device kind %v: %w", d.Kind, errdefs.ErrInvalidArgument)
		}
	}
	spec.Linux.Devices = slices.DeleteFunc(spec.Linux.Devices, func(d specs.LinuxDevice) bool { return dropPaths[d.Path] })
	if res := spec.Linux.Resources; res != nil {
		var rules []specs.LinuxDeviceCgroup
		for _, r := range res.Devices {
			if r.Major != nil && r.Minor != nil && (r.Type == "b" || r.Type == "c") {
				n := devNum{*r.Major, *r.Minor}
				if drop[n] {
					continue
				}
				if g, ok := remap[n]; ok {
					maj, min := g.major, g.minor
					r.Major, r.Minor = &maj, &min
				}
			}
			rules = append(rules, r)
		}
		res.Devices = rules
	}
	return nil
}

// setDeviceEntry points the linux.devices entry at path (adding one if the
// spec has none) at the guest device, moving it to newPath.
func setDeviceEntry(spec *specs.Spec, oldPath, typ, newPath string, n devNum) {
	for _, e := range spec.Linux.Devices {
		if e.Path == newPath && e.Type == typ && e.Major == n.major && e.Minor == n.minor {
			return // another function of the same VFIO group
		}
	}
	for i := range spec.Linux.Devices {
		if e := &spec.Linux.Devices[i]; e.Path == oldPath {
			e.Path, e.Type, e.Major, e.Minor = newPath, typ, n.major, n.minor
			return
		}
	}
	mode := os.FileMode(0o660)
	spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{Path: newPath, Type: typ, Major: n.major, Minor: n.minor, FileMode: &mode})
}

func describeDevice(d *api.Device) string {
	if d.IsMount {
		return fmt.Sprintf("mount %d (PCI path %s)", d.MountIndex, d.PciPath)
	}
	return fmt.Sprintf("%s (PCI path %s)", d.ContainerPath, d.PciPath)
}
