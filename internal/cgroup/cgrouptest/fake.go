// Package cgrouptest builds fake cgroup trees for tests: plain
// directories standing in for the host's cgroup mounts, so that tests
// see exactly what a cgroup.Manager writes without touching the host.
package cgrouptest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-runtime/berth/internal/cgroup"
)

// Host builds a tree under dir for layout (v1 and hybrid get memory, cpu,
// cpuacct, pids and cpuset hierarchies, the host's CPUs being 0-3; v2 and
// hybrid a unified one) and returns
// the host description a Manager needs. parents are cgroup paths (such as
// "/berth") that exist already, as the kernel's cgroup.subtree_control
// files would.
func Host(t testing.TB, dir string, layout cgroup.Layout, systemd bool, parents ...string) cgroup.Host {
	t.Helper()
	h := cgroup.Host{Layout: layout, V1Mounts: map[string]string{}, Systemd: systemd}
	mkdir := func(p string) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if layout == cgroup.LayoutV1 || layout == cgroup.LayoutHybrid {
		for _, c := range []string{"memory", "cpu", "cpuacct", "pids", "cpuset"} {
			p := filepath.Join(dir, c)
			mkdir(p)
			h.V1Mounts[c] = p
		}
		// A new v1 cpuset cgroup is filled from its parent's.
		os.WriteFile(filepath.Join(dir, "cpuset", "cpuset.cpus"), []byte("0-3\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "cpuset", "cpuset.mems"), []byte("0\n"), 0o644)
	}
	switch layout {
	case cgroup.LayoutV2:
		h.V2Mount = dir
	case cgroup.LayoutHybrid:
		h.V2Mount = filepath.Join(dir, "unified")
	}
	if h.V2Mount != "" {
		mkdir(h.V2Mount)
		for _, p := range append([]string{"/"}, parents...) {
			d := filepath.Join(h.V2Mount, p)
			mkdir(d)
			os.WriteFile(filepath.Join(d, "cgroup.controllers"), []byte("cpu cpuset memory pids\n"), 0o644)
			os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), nil, 0o644)
		}
	}
	return h
}

// Exited empties cgroup.procs of path in every hierarchy of h, as the
// kernel does once the processes are gone, so that Delete may proceed.
func Exited(h cgroup.Host, path string) {
	var dirs []string
	for _, m := range h.V1Mounts {
		dirs = append(dirs, filepath.Join(m, path))
	}
	if h.Layout == cgroup.LayoutV2 {
		dirs = append(dirs, filepath.Join(h.V2Mount, path))
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			os.WriteFile(filepath.Join(d, "cgroup.procs"), nil, 0o644)
		}
	}
}
