package device

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Host answers what Berth needs to know about the host's devices. Sysfs
// is the real one; tests give it a fake tree.
type Host interface {
	// DevName is the kernel's name under /dev for a device number
	// (DEVNAME in /sys/dev/<block|char>/M:m/uevent), e.g. "loop3" or
	// "vfio/12". kind is 'b' or 'c'.
	DevName(kind byte, major, minor int64) (string, error)
	// BlockNumbers stats path and reports its numbers if it is a block
	// device node.
	BlockNumbers(path string) (major, minor int64, ok bool)
	// IOMMUGroup lists the PCI functions of an IOMMU group, checking
	// that each is bound to vfio-pci on the host.
	IOMMUGroup(group string) ([]PCIAddress, error)
}

// Sysfs reads devices from a sysfs tree mounted at Root+"/sys", with
// device nodes under Root+"/dev". Root is "" on a real host.
type Sysfs struct {
	Root string
}

var _ Host = Sysfs{}

func (s Sysfs) p(elem ...string) string {
	return filepath.Join(append([]string{s.Root, "/"}, elem...)...)
}

// DevName reads DEVNAME from the device's uevent file.
func (s Sysfs) DevName(kind byte, major, minor int64) (string, error) {
	class := map[byte]string{'b': "block", 'c': "char"}[kind]
	if class == "" {
		return "", fmt.Errorf("device type %q: %w", kind, ErrInvalid)
	}
	f, err := os.Open(s.p("sys/dev", class, fmt.Sprintf("%d:%d", major, minor), "uevent"))
	if err != nil {
		return "", fmt.Errorf("%s device %d:%d does not exist on the host: %w: %w", class, major, minor, err, ErrInvalid)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "DEVNAME="); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("%s device %d:%d has no DEVNAME in sysfs: %w", class, major, minor, ErrInvalid)
}

// BlockNumbers stats a host path.
func (s Sysfs) BlockNumbers(p string) (int64, int64, bool) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(s.Root, p), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, false
	}
	return int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev)), true
}

// IOMMUGroup lists /sys/kernel/iommu_groups/<g>/devices and checks each
// function in /sys/bus/pci/devices. Every error says what to fix.
func (s Sysfs) IOMMUGroup(group string) ([]PCIAddress, error) {
	if group == "" || strings.ContainsAny(group, "/.") {
		return nil, fmt.Errorf("IOMMU group %q is not a group number: %w", group, ErrInvalid)
	}
	if _, err := os.Stat(s.p("sys/kernel/iommu_groups")); err != nil {
		return nil, fmt.Errorf("VFIO group %s: the host has no IOMMU groups (%s is missing): enable the IOMMU in firmware and on the host kernel command line (intel_iommu=on or amd_iommu=on): %w",
			group, s.p("sys/kernel/iommu_groups"), ErrInvalid)
	}
	dir := s.p("sys/kernel/iommu_groups", group, "devices")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("VFIO group %s: %w: %w", group, err, ErrInvalid)
	}
	var fns []PCIAddress
	for _, e := range entries {
		a := PCIAddress(e.Name())
		if !a.Valid() {
			return nil, fmt.Errorf("VFIO group %s: %s/%s is not a PCI address: %w", group, dir, e.Name(), ErrInvalid)
		}
		dev := s.p("sys/bus/pci/devices", string(a))
		if _, err := os.Stat(dev); err != nil {
			return nil, fmt.Errorf("VFIO group %s: function %s is listed in %s but %s is missing: %w", group, a, dir, dev, ErrInvalid)
		}
		drv, err := os.Readlink(filepath.Join(dev, "driver"))
		if err != nil || path.Base(drv) != "vfio-pci" {
			bound := "no driver"
			if err == nil {
				bound = "driver " + path.Base(drv)
			}
			return nil, fmt.Errorf("VFIO group %s: function %s is bound to %s, not vfio-pci: unbind it and bind it to vfio-pci (echo vfio-pci > %s/driver_override; echo %s > /sys/bus/pci/drivers_probe): %w",
				group, a, bound, dev, a, ErrInvalid)
		}
		fns = append(fns, a)
	}
	if len(fns) == 0 {
		return nil, fmt.Errorf("VFIO group %s has no devices in %s: %w", group, dir, ErrInvalid)
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i] < fns[j] })
	return fns, nil
}

// FromSpec reads what a container asks for from its OCI spec:
//
//   - linux.devices entries of type b (ctr run --device /dev/loop3; a CRI
//     Device mapping a host path to /dev/xda) become virtio-blk disks. The
//     spec names them by major:minor only (CRI does not keep the host
//     path), so the host node is found from sysfs and checked by stat;
//   - mounts whose source is a host block device node become disks too;
//   - char device entries whose host node is vfio/<group> are VFIO groups
//     (the container node vfio/vfio is the VFIO container, not a group).
//
// Other entries are left alone: the guest kernel has its own /dev/null,
// /dev/fuse and the like.
func FromSpec(spec *specs.Spec, host Host) (Request, error) {
	var req Request
	if spec.Linux != nil {
		for _, d := range spec.Linux.Devices {
			switch d.Type {
			case "b":
				name, err := host.DevName('b', d.Major, d.Minor)
				if err != nil {
					return Request{}, fmt.Errorf("linux.devices %s: %w", d.Path, err)
				}
				hostPath := filepath.Join("/dev", name)
				if maj, min, ok := host.BlockNumbers(hostPath); !ok || maj != d.Major || min != d.Minor {
					return Request{}, fmt.Errorf("linux.devices %s: host node %s is not block device %d:%d: %w", d.Path, hostPath, d.Major, d.Minor, ErrInvalid)
				}
				req.Blocks = append(req.Blocks, Block{HostPath: hostPath, HostMajor: d.Major, HostMinor: d.Minor, ContainerPath: d.Path, MountIndex: -1})
			case "c", "u":
				name, err := host.DevName('c', d.Major, d.Minor)
				if err != nil || !strings.HasPrefix(name, "vfio/") || name == "vfio/vfio" {
					continue
				}
				g := strings.TrimPrefix(name, "vfio/")
				fns, err := host.IOMMUGroup(g)
				if err != nil {
					return Request{}, fmt.Errorf("linux.devices %s: %w", d.Path, err)
				}
				req.VFIO = append(req.VFIO, VFIOGroup{Group: g, ContainerPath: d.Path, HostMajor: d.Major, HostMinor: d.Minor, Functions: fns})
			}
		}
	}
	for i, m := range spec.Mounts {
		if !filepath.IsAbs(m.Source) || !strings.HasPrefix(filepath.Clean(m.Source), "/dev/") {
			continue
		}
		maj, min, ok := host.BlockNumbers(m.Source)
		if !ok {
			continue
		}
		ro := false
		for _, o := range m.Options {
			ro = ro || o == "ro"
		}
		req.Blocks = append(req.Blocks, Block{HostPath: m.Source, HostMajor: maj, HostMinor: min, MountIndex: i, ReadOnly: ro})
	}
	return req, nil
}
