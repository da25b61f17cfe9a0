package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// ManifestName is the file, in the output directory, that describes a
// finished guest image. Build writes it last: its presence is what makes
// the directory a guest image.
const ManifestName = "manifest.json"

// manifestFormat changes when the layout of the initramfs or the manifest
// changes, so that an image built by an older Berth is rebuilt rather than
// reused.
const manifestFormat = 1

// Artefacts describes a built guest image. It is what manifest.json holds.
type Artefacts struct {
	// Kernel and Initrd are the paths of the kernel image and initramfs.
	// Config is the kernel's build configuration, kept so later checks (such
	// as CONFIG_MEMORY_HOTPLUG for virtio-mem) need not boot a VM.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	Config string `json:"config"`
	// RootImage is the erofs image of the same tree for a guest that
	// boots from virtio-pmem; "" when the kernel cannot (its options are
	// RootImageOptions) or mkfs.erofs was missing.
	RootImage string `json:"rootImage,omitempty"`

	// KernelVersion is the kernel release (uname -r in the guest).
	KernelVersion string `json:"kernelVersion"`
	// KernelPackage and KernelPackageVersion name the concrete Debian
	// package the kernel came from; RequestedPackage is what was asked for,
	// often a meta package.
	KernelPackage        string `json:"kernelPackage"`
	KernelPackageVersion string `json:"kernelPackageVersion"`
	RequestedPackage     string `json:"requestedPackage"`
	// KernelSource is KernelSourceDebian or KernelSourceBerth ("" in
	// manifests written before Berth built its own kernel: debian). For
	// Berth's kernel, KernelPackage is the source package and
	// KernelBuildKey hashes the source version, configuration fragment
	// and recipe, naming the cache directory of the compiled kernel.
	KernelSource   string `json:"kernelSource,omitempty"`
	KernelBuildKey string `json:"kernelBuildKey,omitempty"`

	// AgentSHA256 is the hash of the agent installed as /init.
	AgentSHA256 string `json:"agentSHA256"`
	// Modules are the modules the agent loads, in load order.
	Modules []string `json:"modules"`
	// RequestedModules is the module list asked for, before dependencies
	// were added; a different request means a rebuild.
	RequestedModules []string `json:"requestedModules"`

	// KernelSize, InitrdSize and InitrdSHA256 let Inspect notice a file
	// replaced or truncated after the build.
	KernelSize    int64  `json:"kernelSize"`
	InitrdSize    int64  `json:"initrdSize"`
	InitrdSHA256  string `json:"initrdSHA256"`
	RootImageSize int64  `json:"rootImageSize,omitempty"`

	BuiltAt time.Time `json:"builtAt"`
	Format  int       `json:"format"`
}

// hasRootImageFor reports whether a's root image is what a build
// writing to want would give a's kernel now: so that an image built
// before its kernel had the options (or before erofs-utils was
// installed) is rebuilt, and one built for another path is too.
func (a *Artefacts) hasRootImageFor(want string) bool {
	root, _ := rootImageFor(a.Config, want)
	return a.RootImage == root
}

// Source is KernelSource with the default of old manifests filled in.
func (a *Artefacts) Source() string {
	if a.KernelSource == "" {
		return KernelSourceDebian
	}
	return a.KernelSource
}

// notBuiltError says the output directory holds no complete guest image.
// It wraps fs.ErrNotExist so callers can test for it with errors.Is.
type notBuiltError struct{ dir, reason string }

func (e *notBuiltError) Error() string {
	return fmt.Sprintf("guest image not built in %s: run `berth guest build` (%s)", e.dir, e.reason)
}

func (e *notBuiltError) Unwrap() error { return fs.ErrNotExist }

// Inspect reads the manifest of the guest image in outDir and checks that
// the files it names are there with the sizes it records. Paths in the
// returned Artefacts are absolute.
func Inspect(outDir string) (*Artefacts, error) {
	data, err := os.ReadFile(filepath.Join(outDir, ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &notBuiltError{dir: outDir, reason: ManifestName + " missing"}
	}
	if err != nil {
		return nil, fmt.Errorf("read guest manifest: %w", err)
	}
	var a Artefacts
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, &notBuiltError{dir: outDir, reason: fmt.Sprintf("%s unreadable: %v", ManifestName, err)}
	}
	if a.Format != manifestFormat {
		return nil, &notBuiltError{dir: outDir, reason: fmt.Sprintf("%s has format %d, this berth writes %d", ManifestName, a.Format, manifestFormat)}
	}
	a.Kernel, a.Initrd, a.Config = absIn(outDir, a.Kernel), absIn(outDir, a.Initrd), absIn(outDir, a.Config)
	a.RootImage = absIn(outDir, a.RootImage)
	for _, f := range []struct {
		path string
		size int64
	}{{a.Kernel, a.KernelSize}, {a.Initrd, a.InitrdSize}, {a.Config, -1}, {a.RootImage, a.RootImageSize}} {
		if f.path == "" {
			continue // no root image
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			return nil, &notBuiltError{dir: outDir, reason: fmt.Sprintf("%s is listed in %s but %v", f.path, ManifestName, err)}
		}
		if f.size >= 0 && fi.Size() != f.size {
			return nil, &notBuiltError{dir: outDir, reason: fmt.Sprintf("%s is %d bytes, %s says %d: it was changed after the build", f.path, fi.Size(), ManifestName, f.size)}
		}
	}
	return &a, nil
}

// absIn resolves a manifest path: files inside the output directory are
// recorded by base name so the directory can be moved as a whole.
func absIn(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// relIn is the inverse of absIn.
func relIn(dir, p string) string {
	if filepath.Dir(p) == filepath.Clean(dir) {
		return filepath.Base(p)
	}
	return p
}

// writeManifest records a as outDir's manifest, atomically.
func writeManifest(outDir string, a *Artefacts) error {
	m := *a
	m.Kernel, m.Initrd, m.Config = relIn(outDir, m.Kernel), relIn(outDir, m.Initrd), relIn(outDir, m.Config)
	m.RootImage = relIn(outDir, m.RootImage)
	m.Format = manifestFormat
	data, err := json.MarshalIndent(&m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(outDir, ManifestName), 0o644, func(w io.Writer) error {
		_, err := w.Write(append(data, '\n'))
		return err
	})
}

// writeFileAtomic writes a file through a temporary file in the same
// directory and renames it into place, so a reader (or a crash) sees the
// old file or the complete new one, never a part. QEMU processes that
// already opened the old file keep reading it.
func writeFileAtomic(dst string, perm os.FileMode, write func(io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = write(tmp); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err = tmp.Chmod(perm); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// CheckAgent reports an error unless the image in outDir holds
// agentBinary, byte for byte, as its agent. A benchmark calls it before
// measuring: a state directory can hold an image built from another
// agent (an older build, or a test's hostile one), and its figures would
// then describe that agent, not the build beside it.
func CheckAgent(outDir, agentBinary string) error {
	a, err := Inspect(outDir)
	if err != nil {
		return err
	}
	sum, err := fileSHA256(agentBinary)
	if err != nil {
		return fmt.Errorf("hash the agent %s: %w", agentBinary, err)
	}
	if sum != a.AgentSHA256 {
		return fmt.Errorf("the guest image in %s holds an agent with sha256 %.12s, not %s (sha256 %.12s): rebuild it with `berth guest build` (make guest)", outDir, a.AgentSHA256, agentBinary, sum)
	}
	return nil
}
