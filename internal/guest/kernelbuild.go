package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/guest/kernel"
)

// Kernel sources, as BuildOptions.KernelSource and the manifest name them.
const (
	// KernelSourceDebian is a stock Debian kernel package with its modules
	// packed in the initramfs.
	KernelSourceDebian = "debian"
	// KernelSourceBerth is Berth's own kernel, compiled from Debian's
	// linux-source package with the fragment in guest/kernel, everything
	// built in.
	KernelSourceBerth = "berth"
)

// SourcePackage is the Debian package holding the kernel source Berth's
// own kernel is compiled from: /usr/src/linux-source-6.1.tar.xz.
const SourcePackage = "linux-source-6.1"

// kernelRecipe changes whenever the way the kernel is compiled changes
// (make targets, environment, what is kept), so that a cached kernel from
// an older recipe is rebuilt. It is part of the cache key.
const kernelRecipe = "1"

// compiledKernelFile is what a finished cache directory holds, written
// last: its presence makes the directory a usable kernel.
const compiledKernelFile = "kernel.json"

// compiledKernel describes one cached build of Berth's kernel.
type compiledKernel struct {
	Release        string `json:"release"` // uname -r
	SourcePackage  string `json:"sourcePackage"`
	SourceVersion  string `json:"sourceVersion"`
	Fragment       string `json:"fragment"`
	FragmentSHA256 string `json:"fragmentSHA256"`
	// Edits name the source edits (guest/kernel/edits.go) compiled in.
	Edits        []string `json:"edits,omitempty"`
	BuildSeconds int      `json:"buildSeconds"`
}

// buildTool is a program the kernel build needs that Debian 12 hosts
// often lack; when it is missing it is downloaded and unpacked into the
// cache, never installed.
type buildTool struct {
	pkg string
	// present reports whether the host already has it.
	present func() bool
}

func onPath(bin string) func() bool {
	return func() bool { _, err := exec.LookPath(bin); return err == nil }
}

func fileExists(p string) func() bool {
	return func() bool { _, err := os.Stat(p); return err == nil }
}

// kernelBuildTools: flex and bison build kconfig, m4 is what both run,
// libelf-dev's headers build objtool, which x86_64 always needs.
var kernelBuildTools = []buildTool{
	{"flex", onPath("flex")},
	{"bison", onPath("bison")},
	{"m4", onPath("m4")},
	{"libelf-dev", fileExists("/usr/include/gelf.h")},
}

// hostToolchain is what the host must have: berth downloads source and
// helpers but does not bring a compiler.
var hostToolchain = []string{"gcc", "make", "ld", "objcopy", "bc", "perl", "tar", "xz"}

// berthKernel returns Berth's own kernel for the source package version
// pkg, compiling it unless the cache already holds a build of this
// source, fragment and source edits. The kernel tree it returns lives in
// the cache directory kernel-<version>-<hash>: vmlinux (the uncompressed
// ELF, which QEMU boots through its PVH entry, skipping decompression),
// its config and lib/modules/<release>/modules.builtin.
func berthKernel(ctx context.Context, src packageSource, pkg debPackage, arch string, o BuildOptions, progress func(string, ...any)) (*kernelTree, *compiledKernel, error) {
	fragName, frag, err := kernel.Fragment(arch)
	if err != nil {
		return nil, nil, err
	}
	edits := kernel.Edits(arch)
	sum := sha256.Sum256(frag)
	fragSum := hex.EncodeToString(sum[:])
	key := kernelCacheKey(pkg.Version, frag, edits)
	dir := filepath.Join(o.CacheDir, kernelCacheName(pkg.Version, key))
	if o.Force {
		os.RemoveAll(filepath.Join(o.CacheDir, ".kbuild-"+key))
	}
	if !o.Force {
		if t, ck, err := openCompiledKernel(dir); err == nil {
			progress("using cached kernel %s (%s, compiled in %ds)", ck.Release, dir, ck.BuildSeconds)
			return t, ck, nil
		}
	}
	if runtime.GOARCH != "amd64" {
		return nil, nil, fmt.Errorf("guest.kernel_source = \"berth\" is compiled natively and supports x86_64 hosts only (this is %s): use \"debian\"", runtime.GOARCH)
	}
	for _, t := range hostToolchain {
		if _, err := exec.LookPath(t); err != nil {
			return nil, nil, fmt.Errorf("compiling the guest kernel (guest.kernel_source = \"berth\") needs %s on the host: install build-essential, bc and xz-utils (apt-get install build-essential bc xz-utils), or use guest.kernel_source = \"debian\"", t)
		}
	}

	start := time.Now()
	deb, cached, err := src.fetch(ctx, pkg, o.CacheDir)
	if err != nil {
		return nil, nil, fmt.Errorf("download kernel source: %w", err)
	}
	if cached {
		progress("using cached %s", deb)
	} else {
		progress("downloaded %s", deb)
	}
	env, err := kernelToolEnv(ctx, src, o.CacheDir, progress)
	if err != nil {
		return nil, nil, err
	}

	// The build directory is kept until the kernel is in the cache, so an
	// interrupted or failed build resumes where it stopped (make is
	// incremental) instead of compiling everything again.
	work := filepath.Join(o.CacheDir, ".kbuild-"+key)
	srcDir, err := unpackKernelSource(ctx, src, deb, work, edits, progress)
	if err != nil {
		return nil, nil, err
	}
	objDir := filepath.Join(work, "obj")
	if err := os.MkdirAll(objDir, 0o755); err != nil {
		return nil, nil, err
	}
	fragPath := filepath.Join(work, fragName)
	if err := os.WriteFile(fragPath, frag, 0o644); err != nil {
		return nil, nil, err
	}
	logFile, err := os.OpenFile(filepath.Join(work, "build.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer logFile.Close()

	mk := func(targets ...string) []string {
		return append([]string{"-C", srcDir, "O=" + objDir}, targets...)
	}
	progress("configuring: tinyconfig + %s", fragName)
	steps := [][]string{
		append([]string{"make"}, mk("tinyconfig")...),
		{filepath.Join(srcDir, "scripts", "kconfig", "merge_config.sh"), "-m", "-O", objDir, filepath.Join(objDir, ".config"), fragPath},
		append([]string{"make"}, mk("olddefconfig")...),
	}
	for _, s := range steps {
		if err := run(ctx, objDir, env, logFile, s[0], s[1:]...); err != nil {
			return nil, nil, fmt.Errorf("configure kernel: %w (log: %s)", err, logTail(logFile.Name()))
		}
	}
	cfgData, err := os.ReadFile(filepath.Join(objDir, ".config"))
	if err != nil {
		return nil, nil, err
	}
	if bad := unmetFragment(frag, ParseKernelConfig(bytes.NewReader(cfgData))); len(bad) > 0 {
		return nil, nil, fmt.Errorf("the kernel configuration lost options of %s after olddefconfig (a dependency is missing or an option does not exist in %s %s): %s",
			fragName, pkg.Name, pkg.Version, strings.Join(bad, ", "))
	}

	jobs := strconv.Itoa(runtime.NumCPU())
	pw := newCompileProgress(o.Progress, logFile, start)
	err = run(ctx, objDir, env, pw, "make", mk("-j"+jobs, "vmlinux")...)
	pw.finish()
	if err != nil {
		return nil, nil, fmt.Errorf("compile kernel: %w\n%s", err, logTail(logFile.Name()))
	}
	release, err := os.ReadFile(filepath.Join(objDir, "include", "config", "kernel.release"))
	if err != nil {
		return nil, nil, fmt.Errorf("compiled kernel has no release: %w", err)
	}
	ck := &compiledKernel{
		Release:        strings.TrimSpace(string(release)),
		SourcePackage:  pkg.Name,
		SourceVersion:  pkg.Version,
		Fragment:       fragName,
		FragmentSHA256: fragSum,
		BuildSeconds:   int(time.Since(start).Seconds()),
	}
	for _, e := range edits {
		ck.Edits = append(ck.Edits, e.Name)
	}

	// Assemble the cache directory under a temporary name and rename it
	// into place: a crash never leaves a directory that looks complete.
	out := filepath.Join(work, "out")
	os.RemoveAll(out)
	modDir := filepath.Join(out, "lib", "modules", ck.Release)
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return nil, nil, err
	}
	// Symbols are of no use to QEMU; the PT_NOTE with the PVH entry stays.
	if err := run(ctx, objDir, nil, logFile, "objcopy", "--strip-all", filepath.Join(objDir, "vmlinux"), filepath.Join(out, "vmlinux")); err != nil {
		return nil, nil, fmt.Errorf("strip vmlinux: %w", err)
	}
	for src, dst := range map[string]string{
		filepath.Join(objDir, ".config"):                 filepath.Join(out, "config"),
		filepath.Join(objDir, "modules.builtin"):         filepath.Join(modDir, "modules.builtin"),
		filepath.Join(work, "build.log"):                 filepath.Join(out, "build.log"),
		filepath.Join(objDir, "System.map"):              filepath.Join(out, "System.map"),
		filepath.Join(objDir, "modules.builtin.modinfo"): filepath.Join(modDir, "modules.builtin.modinfo"),
	} {
		if _, err := copyFileAtomic(src, dst); err != nil {
			return nil, nil, fmt.Errorf("keep %s: %w", filepath.Base(src), err)
		}
	}
	data, err := json.MarshalIndent(ck, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(out, compiledKernelFile), append(data, '\n'), 0o644); err != nil {
		return nil, nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, nil, err
	}
	if err := os.Rename(out, dir); err != nil {
		return nil, nil, err
	}
	os.RemoveAll(work)
	removeStaleKernels(o.CacheDir, dir)
	t, ck, err := openCompiledKernel(dir)
	if err != nil {
		return nil, nil, err
	}
	progress("compiled kernel %s in %ds (%s)", ck.Release, ck.BuildSeconds, dir)
	return t, ck, nil
}

// unpackKernelSource unpacks the source package's tarball into work once
// and applies the source edits (a marker file records that both finished)
// and returns the source tree.
func unpackKernelSource(ctx context.Context, src packageSource, deb, work string, edits []kernel.Edit, progress func(string, ...any)) (string, error) {
	marker := filepath.Join(work, ".unpacked")
	if b, err := os.ReadFile(marker); err == nil {
		if dir := strings.TrimSpace(string(b)); filepath.Dir(dir) == work {
			progress("resuming the build in %s", work)
			return dir, nil
		}
	}
	if err := os.RemoveAll(work); err != nil {
		return "", err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", err
	}
	progress("unpacking %s", filepath.Base(deb))
	debDir := filepath.Join(work, "deb")
	if err := src.extract(ctx, deb, debDir); err != nil {
		return "", err
	}
	defer os.RemoveAll(debDir)
	tarballs, _ := filepath.Glob(filepath.Join(debDir, "usr", "src", "linux-source-*.tar.xz"))
	if len(tarballs) != 1 {
		return "", fmt.Errorf("%s holds %d usr/src/linux-source-*.tar.xz (want one)", filepath.Base(deb), len(tarballs))
	}
	if err := run(ctx, work, nil, nil, "tar", "-xf", tarballs[0], "-C", work); err != nil {
		return "", fmt.Errorf("unpack kernel source: %w", err)
	}
	dir := filepath.Join(work, strings.TrimSuffix(filepath.Base(tarballs[0]), ".tar.xz"))
	if _, err := os.Stat(filepath.Join(dir, "Makefile")); err != nil {
		return "", fmt.Errorf("unpacked kernel source: %w", err)
	}
	if err := applyEdits(dir, edits); err != nil {
		return "", err
	}
	if len(edits) > 0 {
		progress("applied %d source edits (guest/kernel/edits.go)", len(edits))
	}
	return dir, os.WriteFile(marker, []byte(dir+"\n"), 0o644)
}

// applyEdits makes each edit in the source tree dir. An edit whose text
// is missing, or found more than once, fails the build: the source moved
// and the edit must be redone for it.
func applyEdits(dir string, edits []kernel.Edit) error {
	for _, e := range edits {
		p := filepath.Join(dir, filepath.FromSlash(e.File))
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("kernel source edit %s: %w", e.Name, err)
		}
		if n := bytes.Count(data, []byte(e.Old)); n != 1 {
			return fmt.Errorf("kernel source edit %s: %s holds its text %d times, want once: this kernel source differs from the one the edit was written for; update guest/kernel/edits.go, or use guest.kernel_source = \"debian\"", e.Name, e.File, n)
		}
		if err := os.WriteFile(p, bytes.Replace(data, []byte(e.Old), []byte(e.New), 1), 0o644); err != nil {
			return fmt.Errorf("kernel source edit %s: %w", e.Name, err)
		}
	}
	return nil
}

// kernelCacheKey hashes what decides the compiled kernel: the source
// version, the fragment, the source edits and the recipe.
func kernelCacheKey(sourceVersion string, fragment []byte, edits []kernel.Edit) string {
	h := sha256.New()
	fmt.Fprintf(h, "recipe %s\nsource %s\n", kernelRecipe, sourceVersion)
	if len(edits) > 0 {
		// Absent for no edits, so that the key of such a build is what
		// it was before edits existed.
		fmt.Fprintf(h, "edits %s\n", kernel.Digest(edits))
	}
	h.Write(fragment)
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// kernelCacheName is the cache directory of one build; a Debian version's
// epoch colon and other odd characters are replaced.
func kernelCacheName(sourceVersion, key string) string {
	v := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '+' || r == '-' {
			return r
		}
		return '_'
	}, sourceVersion)
	return "kernel-" + v + "-" + key
}

// openCompiledKernel opens a finished cache directory.
func openCompiledKernel(dir string) (*kernelTree, *compiledKernel, error) {
	data, err := os.ReadFile(filepath.Join(dir, compiledKernelFile))
	if err != nil {
		return nil, nil, err
	}
	var ck compiledKernel
	if err := json.Unmarshal(data, &ck); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, compiledKernelFile), err)
	}
	if ck.Release == "" || strings.ContainsAny(ck.Release, "/\x00") {
		return nil, nil, fmt.Errorf("%s: bad release %q", filepath.Join(dir, compiledKernelFile), ck.Release)
	}
	t := &kernelTree{
		version: ck.Release,
		modDir:  filepath.Join(dir, "lib", "modules", ck.Release),
		vmlinuz: filepath.Join(dir, "vmlinux"),
		config:  filepath.Join(dir, "config"),
	}
	for _, f := range []string{t.vmlinuz, t.config, filepath.Join(t.modDir, "modules.builtin")} {
		if _, err := os.Stat(f); err != nil {
			return nil, nil, err
		}
	}
	return t, &ck, nil
}

// removeStaleKernels drops other compiled kernels and leftovers of
// interrupted builds: each is ~30 MiB and only the current one is used.
func removeStaleKernels(cacheDir, keep string) {
	entries, _ := os.ReadDir(cacheDir)
	for _, e := range entries {
		p := filepath.Join(cacheDir, e.Name())
		if e.IsDir() && p != keep && (strings.HasPrefix(e.Name(), "kernel-") && !strings.HasPrefix(e.Name(), "kernel-tools") || strings.HasPrefix(e.Name(), ".kbuild-")) {
			os.RemoveAll(p)
		}
	}
}

// unmetFragment lists the fragment's settings that the final configuration
// does not have: olddefconfig silently drops an option whose dependencies
// are off, and a kernel missing a driver would only show at boot.
func unmetFragment(fragment []byte, cfg map[string]string) []string {
	var bad []string
	for _, line := range strings.Split(string(fragment), "\n") {
		line = strings.TrimSpace(line)
		k, want, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "CONFIG_") {
			continue
		}
		want = strings.Trim(want, `"`)
		got, set := cfg[k]
		switch {
		case want == "n" && set && got != "n":
			bad = append(bad, fmt.Sprintf("%s=%s (want it off)", k, got))
		case want != "n" && got != want:
			if !set {
				got = "unset"
			}
			bad = append(bad, fmt.Sprintf("%s=%s (want %s)", k, got, want))
		}
	}
	return bad
}

// kernelToolEnv returns the environment for make: the host's, plus the
// build tools the host lacks, unpacked from their Debian packages into
// CacheDir/kernel-tools.
func kernelToolEnv(ctx context.Context, src packageSource, cacheDir string, progress func(string, ...any)) ([]string, error) {
	env := append(os.Environ(), "KBUILD_BUILD_USER=berth", "KBUILD_BUILD_HOST=berth", "LC_ALL=C")
	var missing []string
	for _, t := range kernelBuildTools {
		if !t.present() {
			missing = append(missing, t.pkg)
		}
	}
	if len(missing) == 0 {
		return env, nil
	}
	root := filepath.Join(cacheDir, "kernel-tools")
	for _, name := range missing {
		p, err := src.lookup(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("the kernel build needs %s, which the host lacks: %w", name, err)
		}
		deb, cached, err := src.fetch(ctx, p, cacheDir)
		if err != nil {
			return nil, fmt.Errorf("download build tool %s: %w", name, err)
		}
		if !cached {
			progress("downloaded build tool %s %s (unpacked into %s, not installed)", p.Name, p.Version, root)
		}
		if err := src.extract(ctx, deb, root); err != nil {
			return nil, err
		}
	}
	bin := filepath.Join(root, "usr", "bin")
	env = append(env, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	if _, err := os.Stat(filepath.Join(root, "usr", "share", "bison")); err == nil {
		env = append(env, "BISON_PKGDATADIR="+filepath.Join(root, "usr", "share", "bison"))
	}
	// flex and bison run m4 by the path compiled into them (/usr/bin/m4)
	// unless M4 says otherwise.
	if m4, err := exec.LookPath(filepath.Join(bin, "m4")); err == nil {
		env = append(env, "M4="+m4)
	} else if m4, err := exec.LookPath("m4"); err == nil {
		env = append(env, "M4="+m4)
	}
	if _, err := os.Stat(filepath.Join(root, "usr", "include", "gelf.h")); err == nil {
		// The unpacked libelf.so is a relative link to a libelf.so.1 beside
		// it, which lives in the host's libelf1; point it there.
		libDir, host, err := hostLibelf(root)
		if err != nil {
			return nil, err
		}
		link := filepath.Join(libDir, "libelf.so")
		os.Remove(link)
		if err := os.Symlink(host, link); err != nil {
			return nil, err
		}
		env = append(env, "HOSTCFLAGS=-I"+filepath.Join(root, "usr", "include"), "HOSTLDFLAGS=-L"+libDir)
	}
	return env, nil
}

// hostLibelf finds the unpacked libelf-dev's library directory and the
// host's shared libelf it should link against.
func hostLibelf(root string) (libDir, host string, err error) {
	dirs, _ := filepath.Glob(filepath.Join(root, "usr", "lib", "*", "libelf.a"))
	if len(dirs) == 0 {
		return "", "", fmt.Errorf("unpacked libelf-dev in %s has no libelf.a", root)
	}
	libDir = filepath.Dir(dirs[0])
	for _, d := range []string{"/usr/lib/" + filepath.Base(libDir), "/lib/" + filepath.Base(libDir), "/usr/lib64", "/usr/lib"} {
		p := filepath.Join(d, "libelf.so.1")
		if _, err := os.Stat(p); err == nil {
			return libDir, p, nil
		}
	}
	return "", "", errors.New("the kernel build needs libelf.so.1 (Debian package libelf1) on the host: apt-get install libelf1, or use guest.kernel_source = \"debian\"")
}

// run runs a command in dir with env (nil: the current environment),
// sending its output to out (nil: kept for the error message only).
func run(ctx context.Context, dir string, env []string, out io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	// make re-invokes itself (O= builds run a sub-make) and forks
	// compilers: killing only the direct child on cancel (Ctrl-C, SIGTERM)
	// would leave them compiling, and holding the output pipe open. Run
	// the command in its own process group and kill the whole group.
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var buf bytes.Buffer
	if out == nil {
		cmd.Stdout, cmd.Stderr = &buf, &buf
	} else {
		cmd.Stdout, cmd.Stderr = out, out
	}
	if err := cmd.Run(); err != nil {
		if buf.Len() > 0 {
			return fmt.Errorf("%s: %w\n%s", name, err, tail(buf.Bytes()))
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// logTail is the end of a build log, for an error message.
func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return path
	}
	return tail(data)
}

// aptListsDir is where apt keeps the package lists; apt-get update
// replaces files in it, which changes its modification time.
var aptListsDir = "/var/lib/apt/lists"

// cachedLookup is src.lookup, remembered in cacheDir until apt's package
// lists change: apt-cache show parses every list and takes seconds on a
// loaded host, and an unchanged `berth guest build` should take well under
// one.
func cachedLookup(ctx context.Context, src packageSource, cacheDir, name string) (debPackage, error) {
	fi, err := os.Stat(aptListsDir)
	if err != nil {
		return src.lookup(ctx, name)
	}
	type memo struct {
		Lists   int64
		Package debPackage
	}
	file := filepath.Join(cacheDir, "apt-"+name+".json")
	if b, err := os.ReadFile(file); err == nil {
		var m memo
		if json.Unmarshal(b, &m) == nil && m.Lists == fi.ModTime().UnixNano() && m.Package.Name == name && m.Package.Version != "" {
			return m.Package, nil
		}
	}
	p, err := src.lookup(ctx, name)
	if err != nil {
		return p, err
	}
	if b, err := json.Marshal(memo{Lists: fi.ModTime().UnixNano(), Package: p}); err == nil {
		writeFileAtomic(file, 0o644, func(w io.Writer) error { _, err := w.Write(b); return err })
	}
	return p, nil
}
