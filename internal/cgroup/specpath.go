package cgroup

import (
	"fmt"
	"path"
	"strings"
)

// A runtime spec's linux.cgroupsPath comes in two syntaxes: a cgroupfs
// path ("/kubepods/burstable/pod<uid>/<id>", what containerd's CRI plugin
// writes for the kubelet's cgroupfs driver) or systemd's
// "<slice>:<prefix>:<name>" (the kubelet's systemd driver). The functions
// here turn either into the Path a Manager of a given driver takes.

// IsSystemdPath reports whether p is in systemd's "<slice>:<prefix>:<name>"
// syntax.
func IsSystemdPath(p string) bool { return strings.Count(p, ":") == 2 }

// SpecPath turns a spec's linux.cgroupsPath into a Path for driver.
//
//   - cgroupfs: a cgroupfs path is used as is (a relative one is taken
//     below the root, as there is no runtime cgroup to be relative to); a
//     systemd path becomes the directory systemd itself would give that
//     scope ("a-b.slice:cri-containerd:<id>" ->
//     "/a.slice/a-b.slice/cri-containerd-<id>.scope"), so that a pod of a
//     kubelet with the systemd driver lands below its pod slice even on a
//     host where Berth writes the file system.
//   - systemd: only the systemd syntax works: a scope is asked of systemd
//     by slice and unit name.
//   - none: the path is only recorded.
func SpecPath(driver, p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty cgroup path: %w", ErrUnsupported)
	}
	switch driver {
	case DriverSystemd:
		if _, _, err := ParseSystemdPath(p); err != nil {
			return "", fmt.Errorf("linux.cgroupsPath %q is not systemd's <slice>:<prefix>:<name>, but cgroup.manager = \"systemd\": run the kubelet and containerd with the systemd cgroup driver, or set cgroup.manager = \"cgroupfs\": %w", p, ErrUnsupported)
		}
		return p, nil
	case DriverCgroupfs, DriverNone:
		if IsSystemdPath(p) {
			slice, unit, err := ParseSystemdPath(p)
			if err != nil {
				return "", err
			}
			return "/" + path.Join(sliceDir(slice), unit), nil
		}
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
		if !ValidPath(p) {
			return "", fmt.Errorf("linux.cgroupsPath %q is not a clean path below the root: %w", p, ErrUnsupported)
		}
		return p, nil
	}
	return "", fmt.Errorf("cgroup driver %q: %w", driver, ErrUnsupported)
}

// Sibling is the cgroup of sandbox id next to p (a Path of driver):
// "berth-<id>" beside p's directory with cgroupfs, the scope
// "berth-<id>.scope" in p's slice with systemd.
func Sibling(driver, p, id string) (string, error) {
	if driver == DriverSystemd {
		slice, _, err := ParseSystemdPath(p)
		if err != nil {
			return "", err
		}
		return slice + ":berth:" + id, nil
	}
	s := path.Join(path.Dir(p), "berth-"+id)
	if !ValidPath(s) {
		return "", fmt.Errorf("cgroup path %q has no parent for the sandbox's cgroup: %w", p, ErrUnsupported)
	}
	return s, nil
}
