package guest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are the kernel modules the agent loads at boot, in the order
// they are asked for (dependencies are added and placed first). They cover
// the devices Berth gives a VM: virtio on PCI (q35) and MMIO (microvm), the
// virtio-serial agent channel, block volumes, virtio-mem, virtiofs root file
// systems, overlay, vsock, virtio-scsi, and virtio-net (pod networking).
var DefaultModules = []string{
	"virtio_pci",
	"virtio_mmio",
	"virtio_console",
	"virtio_blk",
	"virtio_mem",
	"virtiofs",
	"overlay",
	"vmw_vsock_virtio_transport",
	"virtio_scsi",
	// Free page reporting (hypervisor.free_page_reporting, elastic memory).
	"virtio_balloon",
	"virtio_net",
	// fw_cfg in sysfs: the agent reads the sandbox secret from it.
	"qemu_fw_cfg",
	// What container workloads with NET_ADMIN build in their network
	// namespace, as under runc (Berth's own kernel has them built in):
	// bridges (with stp and llc), veth pairs, TUN/TAP, VLANs.
	"bridge",
	"veth",
	"tun",
	"8021q",
	// Loop devices for privileged containers (losetup, mount -o loop).
	"loop",
}

// optionalModules may be missing from a kernel without failing a build that
// uses DefaultModules: a guest without virtio-scsi still runs containers.
// Modules the user names explicitly are always required.
var optionalModules = map[string]bool{"virtio_scsi": true, "virtio_balloon": true,
	"bridge": true, "veth": true, "tun": true, "8021q": true, "loop": true}

// moduleName turns a module file path into the kernel's name for the module:
// the base name without the .ko suffix (and any compression suffix), with
// '-' written as '_', which is how modules.dep, modinfo and /sys/module
// spell it.
func moduleName(p string) string {
	b := path.Base(filepath.ToSlash(p))
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, ext)
	}
	b = strings.TrimSuffix(b, ".ko")
	return strings.ReplaceAll(b, "-", "_")
}

// moduleIndex knows, for one kernel, where each loadable module lives and
// what it depends on.
type moduleIndex struct {
	kernelVersion string
	// paths maps a module name to its file, relative to lib/modules/<kver>.
	paths map[string]string
	// builtin holds modules compiled into the kernel image: they need no
	// file and no loading.
	builtin map[string]bool
	// deps returns a module's direct dependencies. It is backed by
	// modules.dep when the tree has one and by each file's .modinfo when it
	// does not.
	deps func(name string) ([]string, error)
}

// openModuleIndex indexes the modules under modDir (lib/modules/<kver> of an
// extracted kernel package).
//
// Why not only modules.dep: Debian's linux-image packages do not ship it;
// depmod generates it in the package's postinst, which we never run. The
// same dependency list is recorded by modpost in every module's .modinfo
// ("depends="), so that is read instead, only for the modules we need.
func openModuleIndex(modDir, kernelVersion string) (*moduleIndex, error) {
	ix := &moduleIndex{kernelVersion: kernelVersion, builtin: map[string]bool{}}

	if f, err := os.Open(filepath.Join(modDir, "modules.builtin")); err == nil {
		ix.builtin, err = parseModulesBuiltin(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read modules.builtin of kernel %s: %w", kernelVersion, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}

	if f, err := os.Open(filepath.Join(modDir, "modules.dep")); err == nil {
		paths, deps, err := parseModulesDep(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read modules.dep of kernel %s: %w", kernelVersion, err)
		}
		ix.paths = paths
		ix.deps = func(name string) ([]string, error) { return deps[name], nil }
		return ix, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}

	ix.paths = map[string]string{}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.Contains(d.Name(), ".ko") {
			return err
		}
		rel, err := filepath.Rel(modDir, p)
		if err != nil {
			return err
		}
		ix.paths[moduleName(rel)] = filepath.ToSlash(rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules of kernel %s: %w", kernelVersion, err)
	}
	ix.deps = func(name string) ([]string, error) {
		return readModinfoDepends(filepath.Join(modDir, filepath.FromSlash(ix.paths[name])))
	}
	return ix, nil
}

// parseModulesDep reads depmod's modules.dep: one line per module,
// "path: dep-path dep-path ...", paths relative to lib/modules/<kver>. It
// returns each module's path and its dependencies by name.
func parseModulesDep(r io.Reader) (paths map[string]string, deps map[string][]string, err error) {
	paths = map[string]string{}
	deps = map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(mod) == "" {
			return nil, nil, fmt.Errorf("line %d: %q is not \"module.ko: deps...\"", n, line)
		}
		mod = strings.TrimSpace(mod)
		name := moduleName(mod)
		paths[name] = mod
		var ds []string
		for _, d := range strings.Fields(rest) {
			ds = append(ds, moduleName(d))
		}
		deps[name] = ds
	}
	return paths, deps, sc.Err()
}

// parseModulesBuiltin reads modules.builtin (one module path per line) into
// a set of module names.
func parseModulesBuiltin(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			set[moduleName(line)] = true
		}
	}
	return set, sc.Err()
}

// readModinfoDepends returns the "depends=" list from a module's .modinfo
// ELF section.
func readModinfoDepends(file string) ([]string, error) {
	if ext := filepath.Ext(file); ext != ".ko" {
		// Decompressing xz/zstd needs code outside the standard library; the
		// kernels Berth targets (Debian 12) ship plain .ko files.
		return nil, fmt.Errorf("module %s is compressed (%s): only uncompressed .ko modules are supported; use a kernel package that ships them, or run depmod on the tree so modules.dep exists", file, ext)
	}
	f, err := elf.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", file, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section: not a kernel module", file)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", file, err)
	}
	return parseModinfoDepends(data), nil
}

// parseModinfoDepends extracts the comma-separated "depends=" value from the
// NUL-separated key=value strings of a .modinfo section.
func parseModinfoDepends(modinfo []byte) []string {
	var deps []string
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, moduleName(d))
			}
		}
	}
	return deps
}

// loadOrder resolves the modules asked for into a load order: every module
// after all of its dependencies, each once, built-ins left out. It returns
// module names (in order) and the modules from the optional set that were
// skipped because this kernel does not have them.
func (ix *moduleIndex) loadOrder(want []string, optional map[string]bool) (order, skipped []string, err error) {
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	var stack []string

	var visit func(name, neededBy string, emit bool) error
	visit = func(name, neededBy string, emit bool) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			i := len(stack) - 1
			for i > 0 && stack[i] != name {
				i--
			}
			cycle := append(append([]string{}, stack[i:]...), name)
			return fmt.Errorf("module dependency cycle in kernel %s: %s", ix.kernelVersion, strings.Join(cycle, " -> "))
		}
		if ix.builtin[name] {
			state[name] = done
			return nil
		}
		if _, ok := ix.paths[name]; !ok {
			return &missingModuleError{name: name, neededBy: neededBy, kernel: ix.kernelVersion}
		}
		deps, err := ix.deps(name)
		if err != nil {
			return err
		}
		deps = append([]string(nil), deps...)
		sort.Strings(deps) // deterministic whatever the source's order
		state[name] = visiting
		stack = append(stack, name)
		for _, d := range deps {
			if err := visit(d, name, emit); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[name] = done
		if emit {
			order = append(order, name)
		}
		return nil
	}

	for _, w := range want {
		name := moduleName(w)
		if optional[name] {
			// Dry run on a copy of the state so that a missing optional
			// module leaves no half of its dependency tree behind.
			saved := make(map[string]int, len(state))
			for k, v := range state {
				saved[k] = v
			}
			err := visit(name, "", false)
			state, stack = saved, nil
			var me *missingModuleError
			if errors.As(err, &me) {
				skipped = append(skipped, name)
				continue
			}
			if err != nil {
				return nil, nil, err
			}
		}
		if err := visit(name, "", true); err != nil {
			return nil, nil, err
		}
	}
	return order, skipped, nil
}

// missingModuleError says a module is neither a file in the kernel package
// nor built in.
type missingModuleError struct{ name, neededBy, kernel string }

func (e *missingModuleError) Error() string {
	who := ""
	if e.neededBy != "" {
		who = fmt.Sprintf(" (needed by %s)", e.neededBy)
	}
	return fmt.Sprintf("module %s%s is neither a loadable module nor built into kernel %s: drop it from the module list or use a kernel package that provides it", e.name, who, e.kernel)
}
