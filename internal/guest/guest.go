// Package guest builds and inspects the guest image: the kernel a sandbox VM
// boots and the initramfs that holds berth-agent (as /init) and the kernel
// modules the agent loads before it serves.
//
// The kernel is a stock Debian package (linux-image-cloud-amd64 by default),
// downloaded with apt and unpacked without being installed on the host.
// Debian builds virtio, vsock, virtiofs and overlay as modules, so the
// initramfs carries them and a list, /etc/berth/modules.load, in load order;
// the agent loads them itself (internal/agent/kmod) because there is no
// modprobe or udev in the guest.
//
// The output directory holds vmlinuz, initramfs.img, root.erofs (the same
// tree as an erofs image, for a kernel that can boot from it on
// virtio-pmem: rootimage.go), config (the kernel's build configuration)
// and manifest.json. Every file is replaced atomically
// and the manifest is removed before and written after the others, so an
// interrupted build never leaves an image that Inspect accepts.
package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/guest/kernel"
)

// DefaultKernelPackage is the Debian package the guest kernel comes from.
// The cloud flavour is small and has the virtio drivers a VM needs.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// BuildOptions says what to build and where.
type BuildOptions struct {
	// OutDir receives config and manifest.json, and vmlinuz and
	// initramfs.img unless KernelPath and InitrdPath say otherwise.
	// Typically /var/lib/berth/guest.
	OutDir string
	// KernelPath and InitrdPath override where the kernel and initramfs are
	// written (default OutDir/vmlinuz and OutDir/initramfs.img), for a
	// configuration whose guest.kernel and guest.initrd point elsewhere.
	KernelPath string
	InitrdPath string
	// RootImagePath is where the root image (an erofs image of the same
	// tree, for guest.root = "pmem") is written when the kernel can boot
	// from it. Default: OutDir/root.erofs.
	RootImagePath string
	// CacheDir keeps downloaded .deb files between builds. Default:
	// OutDir/../cache.
	CacheDir string
	// KernelPackage is the Debian package to take the kernel from; a meta
	// package is resolved to the concrete linux-image-<kver> package.
	// Default: DefaultKernelPackage.
	KernelPackage string
	// AgentBinary is the static berth-agent installed as /init.
	AgentBinary string
	// KernelSource is KernelSourceDebian (the default: KernelPackage's
	// kernel and modules) or KernelSourceBerth (Berth's own kernel,
	// compiled from SourcePackage; KernelPackage is then ignored).
	KernelSource string
	// Modules are the kernel modules the agent loads at boot; dependencies
	// are added. Default: DefaultModules.
	Modules []string
	// Force rebuilds even if the image is up to date.
	Force bool
	// Progress receives one line per build step. Default: discarded.
	Progress io.Writer
}

// buildSteps is the number of "[n/N]" steps Build reports.
const buildSteps = 4

// Build makes the guest image described by o, or leaves an up-to-date one
// alone. It is safe to run concurrently with itself (builds of one output
// directory are serialised) and with sandboxes booting from the old image.
func Build(ctx context.Context, o BuildOptions) (*Artefacts, error) {
	return build(ctx, o, aptSource{})
}

func build(ctx context.Context, o BuildOptions, src packageSource) (*Artefacts, error) {
	start := time.Now()
	if o.OutDir == "" {
		return nil, errors.New("guest build: no output directory given")
	}
	if o.AgentBinary == "" {
		return nil, errors.New("guest build: no agent binary given: build berth-agent (make build) and pass its path")
	}
	outDir, err := filepath.Abs(o.OutDir)
	if err != nil {
		return nil, err
	}
	o.OutDir = outDir
	if o.KernelPath == "" {
		o.KernelPath = filepath.Join(outDir, "vmlinuz")
	}
	if o.InitrdPath == "" {
		o.InitrdPath = filepath.Join(outDir, "initramfs.img")
	}
	if o.RootImagePath == "" {
		o.RootImagePath = filepath.Join(outDir, RootImageName)
	}
	for _, p := range []*string{&o.KernelPath, &o.InitrdPath, &o.RootImagePath} {
		if *p, err = filepath.Abs(*p); err != nil {
			return nil, err
		}
	}
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(filepath.Dir(outDir), "cache")
	}
	if o.KernelPackage == "" {
		o.KernelPackage = DefaultKernelPackage
	}
	switch o.KernelSource {
	case "":
		o.KernelSource = KernelSourceDebian
	case KernelSourceDebian, KernelSourceBerth:
	default:
		return nil, fmt.Errorf("guest build: kernel source %q is neither %q nor %q (guest.kernel_source)", o.KernelSource, KernelSourceDebian, KernelSourceBerth)
	}
	optional := map[string]bool{}
	if o.Modules == nil {
		o.Modules = DefaultModules
		optional = optionalModules
	}
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	step := func(n int, format string, args ...any) {
		progress(fmt.Sprintf("[%d/%d] ", n, buildSteps)+format, args...)
	}

	// Check the agent before the slow apt calls; its architecture is
	// checked again once the kernel package's is known.
	if err := checkAgent(o.AgentBinary, ""); err != nil {
		return nil, err
	}
	agentSum, err := fileSHA256(o.AgentBinary)
	if err != nil {
		return nil, fmt.Errorf("agent binary: %w", err)
	}
	for _, d := range []string{outDir, filepath.Dir(o.KernelPath), filepath.Dir(o.InitrdPath), filepath.Dir(o.RootImagePath), o.CacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("guest build: %w", err)
		}
	}
	// Lock the cache too: output directories of two configurations may
	// share it, and apt-get download must not race with itself.
	for _, d := range slices.Compact([]string{outDir, o.CacheDir}) {
		unlock, err := lockDir(d, progress)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}

	var tree *kernelTree
	var pkg debPackage
	var buildKey string
	if o.KernelSource == KernelSourceBerth {
		if pkg, err = cachedLookup(ctx, src, o.CacheDir, SourcePackage); err != nil {
			return nil, fmt.Errorf("find the kernel source package (guest.kernel_source = \"berth\"): %w", err)
		}
		debArch := debianArch(runtime.GOARCH)
		_, frag, err := kernel.Fragment(debArch)
		if err != nil {
			return nil, err
		}
		buildKey = kernelCacheKey(pkg.Version, frag, kernel.Edits(debArch))
		step(1, "kernel source %s %s, configuration %s", pkg.Name, pkg.Version, buildKey)
		if err := checkAgent(o.AgentBinary, debArch); err != nil {
			return nil, err
		}
		if prev, err := Inspect(outDir); err == nil && !o.Force && prev.KernelSource == KernelSourceBerth &&
			prev.KernelBuildKey == buildKey && prev.AgentSHA256 == agentSum && slices.Equal(prev.RequestedModules, o.Modules) &&
			prev.Kernel == o.KernelPath && prev.Initrd == o.InitrdPath && prev.hasRootImageFor(o.RootImagePath) {
			progress("guest image up to date (kernel %s, agent sha256 %.12s): use --force to rebuild", prev.KernelVersion, agentSum)
			return prev, nil
		}
		t, ck, err := berthKernel(ctx, src, pkg, debArch, o, progress)
		if err != nil {
			return nil, err
		}
		step(2, "kernel %s compiled from %s %s (cached in %s)", ck.Release, ck.SourcePackage, ck.SourceVersion, filepath.Dir(t.vmlinuz))
		tree = t
	} else {
		if pkg, err = src.resolve(ctx, o.KernelPackage, progress); err != nil {
			return nil, fmt.Errorf("resolve kernel package: %w", err)
		}
		step(1, "resolving kernel package %s -> %s (%s)", o.KernelPackage, pkg.Name, pkg.Version)
		if err := checkAgent(o.AgentBinary, pkg.Arch); err != nil {
			return nil, err
		}

		if prev, err := Inspect(outDir); err == nil && !o.Force && prev.Source() == KernelSourceDebian &&
			prev.KernelPackage == pkg.Name && prev.KernelPackageVersion == pkg.Version &&
			prev.AgentSHA256 == agentSum && slices.Equal(prev.RequestedModules, o.Modules) &&
			prev.Kernel == o.KernelPath && prev.Initrd == o.InitrdPath && prev.hasRootImageFor(o.RootImagePath) {
			progress("guest image up to date (kernel %s, agent sha256 %.12s): use --force to rebuild", prev.KernelVersion, agentSum)
			return prev, nil
		}

		deb, cached, err := src.fetch(ctx, pkg, o.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("download kernel package: %w", err)
		}
		if cached {
			step(2, "using cached %s", deb)
		} else {
			step(2, "downloaded %s", deb)
		}
		if tree, err = extractCached(ctx, src, deb, o.CacheDir, o.Force); err != nil {
			return nil, err
		}
	}
	ix, err := openModuleIndex(tree.modDir, tree.version)
	if err != nil {
		return nil, err
	}
	names, skipped, err := ix.loadOrder(o.Modules, optional)
	if err != nil {
		return nil, err
	}
	for _, s := range skipped {
		progress("skipping optional module %s: kernel %s does not provide it", s, tree.version)
	}
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = ix.paths[n]
	}
	if len(names) == 0 {
		step(3, "kernel %s: no modules to load (all built in)", tree.version)
	} else {
		step(3, "kernel %s: %d modules to load: %s", tree.version, len(names), strings.Join(names, " "))
	}

	// From here on the directory is being changed: drop the manifest first
	// so that a crash part-way leaves "not built", never a kernel from one
	// build paired with an initramfs from another.
	if err := os.Remove(filepath.Join(outDir, ManifestName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	a := &Artefacts{
		Kernel:               o.KernelPath,
		Initrd:               o.InitrdPath,
		Config:               filepath.Join(outDir, "config"),
		KernelVersion:        tree.version,
		KernelPackage:        pkg.Name,
		KernelPackageVersion: pkg.Version,
		RequestedPackage:     o.KernelPackage,
		KernelSource:         o.KernelSource,
		KernelBuildKey:       buildKey,
		AgentSHA256:          agentSum,
		Modules:              names,
		RequestedModules:     o.Modules,
	}
	if a.KernelSize, err = copyFileAtomic(tree.vmlinuz, a.Kernel); err != nil {
		return nil, err
	}
	if _, err := copyFileAtomic(tree.config, a.Config); err != nil {
		return nil, err
	}
	spec := initramfsSpec{kernelVersion: tree.version, agent: o.AgentBinary, modDir: tree.modDir, modules: paths}
	if err := writeFileAtomic(a.Initrd, 0o644, func(w io.Writer) error { return writeInitramfs(w, spec) }); err != nil {
		return nil, fmt.Errorf("write initramfs: %w", err)
	}
	fi, err := os.Stat(a.Initrd)
	if err != nil {
		return nil, err
	}
	a.InitrdSize = fi.Size()
	if a.InitrdSHA256, err = fileSHA256(a.Initrd); err != nil {
		return nil, err
	}
	step(4, "wrote %s (%.1f MiB)", a.Initrd, float64(a.InitrdSize)/(1<<20))
	root, why := rootImageFor(a.Config, o.RootImagePath)
	if why != "" {
		progress("%s", why)
	}
	if root == "" {
		if err := removeStaleRootImage(o.RootImagePath); err != nil {
			return nil, err
		}
	} else {
		if a.RootImageSize, err = writeRootImage(ctx, root, outDir, spec); err != nil {
			return nil, fmt.Errorf("write root image: %w", err)
		}
		a.RootImage = root
		progress("wrote %s (%.1f MiB, erofs for guest.root = \"pmem\")", root, float64(a.RootImageSize)/(1<<20))
	}
	a.BuiltAt = time.Now().UTC().Truncate(time.Second)
	if err := writeManifest(outDir, a); err != nil {
		return nil, fmt.Errorf("write guest manifest: %w", err)
	}
	progress("guest image ready in %s (%s)", outDir, time.Since(start).Round(100*time.Millisecond))
	return a, nil
}

// extractCached unpacks deb into CacheDir/<package file name without .deb>
// and returns the kernel tree there, reusing an earlier extraction unless
// force is set. The tree is unpacked under a temporary name and renamed, so
// a crash never leaves a half tree that looks complete. Trees of other
// packages are removed: only the current kernel's is worth its ~100 MiB.
func extractCached(ctx context.Context, src packageSource, deb, cacheDir string, force bool) (*kernelTree, error) {
	dir := strings.TrimSuffix(deb, ".deb")
	if !force {
		if t, err := openKernelTree(dir); err == nil {
			return t, nil
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".extract-")
	if err != nil {
		return nil, err
	}
	if err := src.extract(ctx, deb, tmp); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	entries, _ := os.ReadDir(cacheDir)
	for _, e := range entries {
		p := filepath.Join(cacheDir, e.Name())
		if e.IsDir() && p != dir && (strings.HasPrefix(e.Name(), "linux-image-") || strings.HasPrefix(e.Name(), ".extract-")) {
			os.RemoveAll(p)
		}
	}
	return openKernelTree(dir)
}

// debianArch is Debian's name for a Go architecture.
func debianArch(goarch string) string {
	switch goarch {
	case "386":
		return "i386"
	case "arm":
		return "armhf"
	}
	return goarch // amd64, arm64, riscv64, ppc64le, s390x
}

func copyFileAtomic(src, dst string) (int64, error) {
	var n int64
	err := writeFileAtomic(dst, 0o644, func(w io.Writer) error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err = io.Copy(w, f)
		return err
	})
	return n, err
}

// lockDir serialises builds of one output directory: two `berth guest
// build` runs would otherwise race on the same temporary names and
// manifest.
func lockDir(dir string, progress func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("guest build lock: %w", err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		progress("waiting for another guest build in %s", dir)
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("guest build lock: %w", err)
	}
	return func() { f.Close() }, nil
}
