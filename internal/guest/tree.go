package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// kernelTree is an extracted linux-image package.
type kernelTree struct {
	version string // e.g. 6.1.0-56-cloud-amd64
	modDir  string // <root>/lib/modules/<version>
	vmlinuz string // <root>/boot/vmlinuz-<version>
	config  string // <root>/boot/config-<version>
}

// openKernelTree finds the kernel image, its config and its modules in a
// package extracted at root. Debian 12 installs modules under /lib/modules;
// later releases (merged /usr) use /usr/lib/modules, so both are tried.
func openKernelTree(root string) (*kernelTree, error) {
	var dirs []string
	for _, base := range []string{"lib/modules", "usr/lib/modules"} {
		entries, err := os.ReadDir(filepath.Join(root, base))
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(root, base, e.Name()))
			}
		}
	}
	if len(dirs) != 1 {
		return nil, fmt.Errorf("kernel package extracted at %s has %d module directories (want exactly one lib/modules/<version>): is it a linux-image package?", root, len(dirs))
	}
	t := &kernelTree{version: filepath.Base(dirs[0]), modDir: dirs[0]}
	t.vmlinuz = filepath.Join(root, "boot", "vmlinuz-"+t.version)
	t.config = filepath.Join(root, "boot", "config-"+t.version)
	for _, f := range []string{t.vmlinuz, t.config} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("kernel package for %s lacks %s: %w", t.version, strings.TrimPrefix(f, root), err)
		}
	}
	return t, nil
}
