package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-runtime/berth/guest/kernel"
)

// TestFragmentHasEveryRequiredFeature keeps guest/kernel's fragment and
// KernelFeatures in step: the check `berth check` runs must pass on the
// kernel Berth builds, with everything built in (no module to load).
func TestFragmentHasEveryRequiredFeature(t *testing.T) {
	_, frag, err := kernel.Fragment("amd64")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ParseKernelConfig(bytes.NewReader(frag))
	for _, s := range CheckKernelFeatures(cfg, nil) {
		if !s.OK() || len(s.Modular) > 0 {
			t.Errorf("fragment: feature %q: missing %v, modular %v", s.Name, s.Missing, s.Modular)
		}
	}
	for i, line := range strings.Split(string(frag), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "CONFIG_") || v == "" || v == "m" {
			t.Errorf("fragment line %d %q is not CONFIG_X=y|n|value (no modules)", i+1, line)
		}
	}
	if _, _, err := kernel.Fragment("arm64"); err == nil || !strings.Contains(err.Error(), "guest.kernel_source") {
		t.Errorf("arm64 fragment: %v", err)
	}
}

func TestUnmetFragment(t *testing.T) {
	frag := []byte("# comment\nCONFIG_A=y\nCONFIG_B=y\nCONFIG_C=n\nCONFIG_D=\"x\"\nCONFIG_E=n\n")
	got := unmetFragment(frag, map[string]string{"CONFIG_A": "y", "CONFIG_C": "y", "CONFIG_D": "x"})
	want := []string{"CONFIG_B=unset (want y)", "CONFIG_C=y (want it off)"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("unmetFragment = %q, want %q", got, want)
	}
}

func TestKernelCacheKey(t *testing.T) {
	a := kernelCacheKey("6.1.192-3", []byte("CONFIG_A=y\n"), nil)
	if len(a) != 12 || a != kernelCacheKey("6.1.192-3", []byte("CONFIG_A=y\n"), nil) {
		t.Errorf("key %q not stable", a)
	}
	if a == kernelCacheKey("6.1.192-4", []byte("CONFIG_A=y\n"), nil) || a == kernelCacheKey("6.1.192-3", []byte("CONFIG_A=n\n"), nil) {
		t.Error("key ignores the source version or the fragment")
	}
	edit := []kernel.Edit{{Name: "e", File: "f", Old: "a", New: "b"}}
	changed := []kernel.Edit{{Name: "e", File: "f", Old: "a", New: "c"}}
	if b := kernelCacheKey("6.1.192-3", []byte("CONFIG_A=y\n"), edit); b == a || b == kernelCacheKey("6.1.192-3", []byte("CONFIG_A=y\n"), changed) {
		t.Error("key ignores the source edits")
	}
	if got := kernelCacheName("1:6.1/x", "abc"); got != "kernel-1_6.1_x-abc" {
		t.Errorf("kernelCacheName = %q", got)
	}
}

// writeCompiledKernel lays out a cache directory as berthKernel leaves it.
func writeCompiledKernel(t *testing.T, dir, release string) {
	t.Helper()
	mod := filepath.Join(dir, "lib", "modules", release)
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	_, frag, _ := kernel.Fragment("amd64")
	files := map[string]string{
		filepath.Join(dir, "vmlinux"): "fake ELF vmlinux",
		filepath.Join(dir, "config"):  string(frag),
		filepath.Join(mod, "modules.builtin"): strings.Join([]string{"kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/virtio/virtio_mmio.ko",
			"kernel/drivers/char/virtio_console.ko", "kernel/drivers/block/virtio_blk.ko", "kernel/drivers/virtio/virtio_mem.ko",
			"kernel/fs/fuse/virtiofs.ko", "kernel/fs/fuse/fuse.ko", "kernel/fs/overlayfs/overlay.ko",
			"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko", "kernel/drivers/scsi/virtio_scsi.ko", "kernel/drivers/net/virtio_net.ko", "kernel/drivers/firmware/qemu_fw_cfg.ko"}, "\n") + "\n",
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := json.Marshal(compiledKernel{Release: release, SourcePackage: SourcePackage, SourceVersion: "1.0-1", BuildSeconds: 240})
	if err := os.WriteFile(filepath.Join(dir, compiledKernelFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBuildBerthKernelCached builds a guest image from a compiled kernel
// already in the cache: nothing is compiled or downloaded, the image loads
// no modules (every default module is built in), the manifest names the
// source, and an unchanged rerun is a no-op.
func TestBuildBerthKernelCached(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	agent := filepath.Join(t.TempDir(), "berth-agent")
	writeStaticAgent(t, agent, "agent v1")
	src := newFakeSource(t)
	_, frag, _ := kernel.Fragment("amd64")
	cacheDir := filepath.Join(state, "cache")
	writeCompiledKernel(t, filepath.Join(cacheDir, kernelCacheName("1.0-1", kernelCacheKey("1.0-1", frag, kernel.Edits("amd64")))), "6.1.999-berth")
	var progress bytes.Buffer
	o := BuildOptions{OutDir: filepath.Join(state, "guest"), AgentBinary: agent, Progress: &progress, KernelSource: KernelSourceBerth}

	start := time.Now()
	a, err := build(ctx, o, src)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress.String())
	}
	if len(a.Modules) != 0 {
		t.Errorf("modules to load = %v, want none: all are built in", a.Modules)
	}
	if a.Source() != KernelSourceBerth || a.KernelPackage != SourcePackage || a.KernelVersion != "6.1.999-berth" || a.KernelBuildKey == "" {
		t.Errorf("manifest: %+v", a)
	}
	if src.fetches != 0 {
		t.Errorf("%d downloads for a cached kernel", src.fetches)
	}
	if k, _ := os.ReadFile(a.Kernel); string(k) != "fake ELF vmlinux" {
		t.Errorf("kernel = %q", k)
	}
	if !strings.Contains(progress.String(), "using cached kernel 6.1.999-berth") {
		t.Errorf("progress:\n%s", progress.String())
	}
	progress.Reset()
	if _, err := build(ctx, o, src); err != nil || !strings.Contains(progress.String(), "up to date") {
		t.Errorf("rerun: %v\n%s", err, progress.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cached builds took %s", d)
	}

	// Switching back to the Debian kernel rebuilds the image.
	progress.Reset()
	o.KernelSource = KernelSourceDebian
	o.Modules = []string{"virtio_pci"} // what the fake Debian kernel has
	a, err = build(ctx, o, src)
	if err != nil || a.Source() != KernelSourceDebian || strings.Contains(progress.String(), "up to date") {
		t.Errorf("back to debian: %v %+v\n%s", err, a, progress.String())
	}

	o.KernelSource = "gentoo"
	if _, err := build(ctx, o, src); err == nil || !strings.Contains(err.Error(), "guest.kernel_source") {
		t.Errorf("unknown source: %v", err)
	}
}

func TestCompileProgressPlainLines(t *testing.T) {
	var out, log bytes.Buffer
	p := newCompileProgress(&out, &log, time.Now())
	p.lastShow = time.Now().Add(-time.Hour) // the next counted line reports
	p.Write([]byte("make[1]: Entering directory\n  CC      kernel/fork.o\n  CC      kernel/exit"))
	p.Write([]byte(".o\n  LD      vmlinux.o\nwarning: x\n"))
	p.finish()
	if p.compiled != 2 {
		t.Errorf("compiled = %d, want 2", p.compiled)
	}
	if !strings.Contains(log.String(), "warning: x") || !strings.Contains(log.String(), "kernel/exit.o") {
		t.Errorf("log lost lines:\n%s", log.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "compiling kernel: 1 files (~0%)") || !strings.HasPrefix(lines[1], "compiled 2 files in") {
		t.Errorf("progress lines (no terminal: plain, rate-limited):\n%s", out.String())
	}
	if strings.ContainsAny(out.String(), "\r\x1b") {
		t.Errorf("terminal control characters in a log: %q", out.String())
	}
}

// TestCachedLookup: apt is asked once, then again only after apt's lists
// change (apt-get update).
func TestCachedLookup(t *testing.T) {
	lists := t.TempDir()
	defer func(d string) { aptListsDir = d }(aptListsDir)
	aptListsDir = lists
	src, cache := newFakeSource(t), t.TempDir()
	for i := 0; i < 3; i++ {
		p, err := cachedLookup(context.Background(), src, cache, SourcePackage)
		if err != nil || p.Name != SourcePackage || p.Version != "1.0-1" {
			t.Fatalf("lookup %d: %+v %v", i, p, err)
		}
	}
	if src.lookups != 1 {
		t.Errorf("%d apt lookups for 3 unchanged builds, want 1", src.lookups)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(lists, later, later)
	cachedLookup(context.Background(), src, cache, SourcePackage)
	if src.lookups != 2 {
		t.Errorf("apt lists changed but the memo was used (%d lookups)", src.lookups)
	}
}

func TestApplyEditsReplacesOnceAndRefusesMovedSource(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "mm", "page_alloc.c")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		if err := os.WriteFile(src, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	edit := []kernel.Edit{{Name: "wider-stores", File: "mm/page_alloc.c", Old: "memset(p, x, 4096);\n", New: "memset64(p, y, 512);\n"}}

	write("a\nmemset(p, x, 4096);\nb\n")
	if err := applyEdits(dir, edit); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(src); string(got) != "a\nmemset64(p, y, 512);\nb\n" {
		t.Errorf("edited file = %q", got)
	}

	for name, content := range map[string]string{"missing": "a\nb\n", "twice": "memset(p, x, 4096);\nmemset(p, x, 4096);\n"} {
		write(content)
		err := applyEdits(dir, edit)
		if err == nil || !strings.Contains(err.Error(), "wider-stores") || !strings.Contains(err.Error(), "mm/page_alloc.c") || !strings.Contains(err.Error(), "edits.go") {
			t.Errorf("%s: err = %v, want one naming the edit, the file and guest/kernel/edits.go", name, err)
		}
		if got, _ := os.ReadFile(src); string(got) != content {
			t.Errorf("%s: the file changed although the edit failed: %q", name, got)
		}
	}
	if err := applyEdits(dir, []kernel.Edit{{Name: "gone", File: "no/such.c", Old: "x", New: "y"}}); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("edit of a missing file: err = %v", err)
	}
}

// The edits are written against linux-source-6.1's text; this checks them
// against the package the build cache holds, when a machine has one, so a
// source update that moved their text shows here rather than at the start
// of a build.
func TestKernelEditsApplyToCachedSource(t *testing.T) {
	debs, _ := filepath.Glob("/var/lib/berth/cache/linux-source-6.1_*_all.deb")
	if len(debs) == 0 || testing.Short() {
		t.Skip("no linux-source-6.1 package in /var/lib/berth/cache (make guest downloads it), or -short")
	}
	edits := kernel.Edits("amd64")
	if len(edits) == 0 {
		t.Fatal("no edits for amd64")
	}
	dir := t.TempDir()
	var files []string
	for _, e := range edits {
		files = append(files, "linux-source-6.1/"+e.File)
	}
	script := `dpkg-deb --fsys-tarfile "$1" | tar -xO ./usr/src/linux-source-6.1.tar.xz | tar -xJ -C "$2" "${@:3}"`
	if out, err := exec.Command("bash", append([]string{"-c", script, "x", debs[len(debs)-1], dir}, files...)...).CombinedOutput(); err != nil {
		t.Fatalf("extract %v from %s: %v\n%s", files, debs[len(debs)-1], err, out)
	}
	if err := applyEdits(filepath.Join(dir, "linux-source-6.1"), edits); err != nil {
		t.Fatal(err)
	}
}
