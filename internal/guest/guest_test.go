package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/berth-runtime/berth/internal/agent"
	"github.com/berth-runtime/berth/internal/agent/kmod"
)

type cpioEntry struct {
	mode                 cpio.FileMode
	rdevMajor, rdevMinor int64
	mtime                int64
	data                 string
}

// readInitramfs lists an uncompressed newc archive twice: with cpio.Reader (an
// independent reader must accept it) and with a raw header walk, which also
// sees the device numbers cpio.Header does not carry.
func readInitramfs(t *testing.T, img []byte) (names []string, entries map[string]cpioEntry) {
	t.Helper()
	raw := img

	entries = map[string]cpioEntry{}
	r := cpio.NewReader(bytes.NewReader(raw))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("cpio.Reader: %v", err)
		}
		data, _ := io.ReadAll(r)
		if h.Mode&^cpio.ModePerm == cpio.TypeSymlink {
			data = []byte(h.Linkname) // the reader takes a symlink's body as its target
		}
		names = append(names, h.Name)
		entries[h.Name] = cpioEntry{mode: h.Mode, data: string(data), mtime: h.ModTime.Unix()}
	}

	hex := func(b []byte) int64 { v, _ := strconv.ParseInt(string(b), 16, 64); return v }
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; off < len(raw); {
		h := raw[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		size, namesize := int(hex(h[54:62])), int(hex(h[94:102]))
		name := string(raw[off+110 : off+110+namesize-1])
		if name == "TRAILER!!!" {
			break
		}
		e := entries[name]
		e.rdevMajor, e.rdevMinor = hex(h[78:86]), hex(h[86:94])
		entries[name] = e
		off = align(align(off+110+namesize) + size)
	}
	return names, entries
}

func TestWriteInitramfs(t *testing.T) {
	const kver = "6.1.0-test-amd64"
	modDir := writeFakeKernelTree(t, t.TempDir(), kver)
	agent := filepath.Join(t.TempDir(), "berth-agent")
	writeStaticAgent(t, agent, "agent v1")
	spec := initramfsSpec{kernelVersion: kver, agent: agent, modDir: modDir, modules: []string{
		"kernel/drivers/virtio/virtio.ko", "kernel/fs/fuse/fuse.ko", "kernel/fs/fuse/virtiofs.ko",
	}}
	var img bytes.Buffer
	if err := writeInitramfs(&img, spec); err != nil {
		t.Fatal(err)
	}
	names, entries := readInitramfs(t, img.Bytes())

	want := map[string]cpio.FileMode{
		"dev":                    cpio.TypeDir | 0o755,
		"proc":                   cpio.TypeDir | 0o755,
		"sys":                    cpio.TypeDir | 0o755,
		"run":                    cpio.TypeDir | 0o755,
		"tmp":                    cpio.TypeDir | cpio.ModeSticky | 0o777,
		"etc":                    cpio.TypeDir | 0o755,
		"etc/berth":              cpio.TypeDir | 0o755,
		"lib/modules/" + kver:    cpio.TypeDir | 0o755,
		"dev/console":            cpio.TypeChar | 0o600,
		"berth":                  cpio.TypeDir | 0o755,
		"berth/agent":            cpio.TypeReg | 0o755,
		"init":                   cpio.TypeSymlink | 0o777,
		"etc/berth/modules.load": cpio.TypeReg | 0o644,
		"lib/modules/" + kver + "/kernel/fs/fuse/virtiofs.ko": cpio.TypeReg | 0o644,
		"lib/modules/" + kver + "/kernel/drivers/virtio":      cpio.TypeDir | 0o755,
	}
	for name, mode := range want {
		e, ok := entries[name]
		if !ok {
			t.Errorf("initramfs lacks %s; it has %v", name, names)
			continue
		}
		if e.mode != mode {
			t.Errorf("%s: mode %o, want %o", name, e.mode, mode)
		}
	}
	if c := entries["dev/console"]; c.rdevMajor != 5 || c.rdevMinor != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", c.rdevMajor, c.rdevMinor)
	}
	agentBytes, _ := os.ReadFile(agent)
	if entries["berth/agent"].data != string(agentBytes) {
		t.Error("/berth/agent is not the agent")
	}
	if got := entries["init"].data; got != "/berth/agent" {
		t.Errorf("/init links to %q, want /berth/agent", got)
	}
	if got, want := entries["etc/berth/modules.load"].data, strings.Join(spec.modules, "\n")+"\n"; got != want {
		t.Errorf("modules.load = %q, want %q", got, want)
	}
	mods := 0
	for _, n := range names {
		if strings.HasSuffix(n, ".ko") {
			mods++
		}
		if entries[n].mtime != 0 {
			t.Errorf("%s: mtime %d, want 0", n, entries[n].mtime)
		}
	}
	if mods != 3 {
		t.Errorf("initramfs has %d modules, want 3 (only those listed)", mods)
	}
	// Each directory comes before anything inside it.
	seen := map[string]bool{}
	for _, n := range names {
		if d := filepath.Dir(n); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory %s", n, d)
		}
		seen[n] = true
	}

	// Same inputs, same bytes: the image is reproducible.
	var again bytes.Buffer
	if err := writeInitramfs(&again, spec); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img.Bytes(), again.Bytes()) {
		t.Error("two builds from the same inputs differ")
	}
}

func TestAgentDirMatchesAgent(t *testing.T) {
	if AgentDir != agent.InitramfsAgentDir {
		t.Errorf("guest.AgentDir %q != agent.InitramfsAgentDir %q: the agent would not find itself when it leaves the initramfs", AgentDir, agent.InitramfsAgentDir)
	}
}

func TestModulesListPathMatchesAgent(t *testing.T) {
	if ModulesListPath != kmod.ListPath {
		t.Errorf("guest.ModulesListPath %q != kmod.ListPath %q: the agent would not find the module list", ModulesListPath, kmod.ListPath)
	}
}

func TestInspectNotBuilt(t *testing.T) {
	dir := t.TempDir()
	_, err := Inspect(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Inspect(empty) = %v, want fs.ErrNotExist", err)
	}
	want := "guest image not built in " + dir + ": run `berth guest build`"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

func TestManifestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.img", "config"} {
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	elsewhere := filepath.Join(t.TempDir(), "initrd.img")
	os.WriteFile(elsewhere, []byte("initrd"), 0o644)
	a := &Artefacts{
		Kernel: filepath.Join(dir, "vmlinuz"), Initrd: elsewhere, Config: filepath.Join(dir, "config"),
		KernelVersion: "6.1.0-56-cloud-amd64", KernelPackage: "linux-image-6.1.0-56-cloud-amd64",
		KernelPackageVersion: "6.1.192-2", RequestedPackage: "linux-image-cloud-amd64",
		AgentSHA256: "abc", Modules: []string{"virtio", "virtio_pci"}, RequestedModules: []string{"virtio_pci"},
		KernelSize: 7, InitrdSize: 6, BuiltAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	if err := writeManifest(dir, a); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, ManifestName))
	if !strings.Contains(string(raw), `"kernel": "vmlinuz"`) {
		t.Errorf("kernel inside the directory should be stored by name: %s", raw)
	}
	got, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	a.Format = manifestFormat
	if got.Kernel != a.Kernel || got.Initrd != a.Initrd || got.Config != a.Config ||
		got.KernelPackageVersion != a.KernelPackageVersion || !got.BuiltAt.Equal(a.BuiltAt) ||
		!slices.Equal(got.Modules, a.Modules) || got.Format != manifestFormat {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, a)
	}

	// A truncated initramfs is noticed.
	os.WriteFile(elsewhere, []byte("x"), 0o644)
	if _, err := Inspect(dir); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "changed after the build") {
		t.Errorf("Inspect with a changed initrd = %v", err)
	}
}

func TestCheckAgent(t *testing.T) {
	dir := t.TempDir()
	static := filepath.Join(dir, "static")
	writeStaticAgent(t, static, "x")
	if err := checkAgent(static, "amd64"); err != nil {
		t.Errorf("static amd64 agent rejected: %v", err)
	}
	dynamic := filepath.Join(dir, "dynamic")
	writeELF(t, dynamic, elf.ET_EXEC, elf.EM_X86_64, map[string][]byte{".text": {1}}, true)
	if err := checkAgent(dynamic, "amd64"); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("dynamic agent: %v", err)
	}
	if err := checkAgent(static, "arm64"); err == nil || !strings.Contains(err.Error(), "GOARCH=arm64") {
		t.Errorf("wrong arch agent: %v", err)
	}
	script := filepath.Join(dir, "script")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	if err := checkAgent(script, "amd64"); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("script agent: %v", err)
	}
}

// TestBuildIdempotent runs Build against a fake package source: a first
// build, an up-to-date rerun that touches nothing, a rebuild for a new
// agent that reuses the extracted kernel, and a forced rebuild that
// re-extracts but reuses the cached package.
func TestBuildIdempotent(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	agent := filepath.Join(t.TempDir(), "berth-agent")
	writeStaticAgent(t, agent, "agent v1")
	src := newFakeSource(t)
	var progress bytes.Buffer
	o := BuildOptions{OutDir: filepath.Join(state, "guest"), AgentBinary: agent, Progress: &progress,
		Modules: []string{"virtio_pci", "virtiofs", "overlay"}}

	a, err := build(ctx, o, src)
	if err != nil {
		t.Fatalf("first build: %v\n%s", err, progress.String())
	}
	if want := []string{"virtio", "virtio_pci_modern_dev", "virtio_ring", "virtio_pci", "fuse", "virtiofs"}; !slices.Equal(a.Modules, want) {
		t.Errorf("modules = %v, want %v", a.Modules, want)
	}
	for _, f := range []string{"vmlinuz", "initramfs.img", "config", ManifestName} {
		if _, err := os.Stat(filepath.Join(state, "guest", f)); err != nil {
			t.Errorf("output lacks %s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "cache", src.pkg.fileName())); err != nil {
		t.Errorf("package not cached in state/cache: %v", err)
	}
	if !strings.Contains(progress.String(), "[1/4] resolving kernel package linux-image-cloud-amd64 -> linux-image-6.1.0-99-test-amd64 (6.1.999-1)") {
		t.Errorf("progress lacks the resolve step:\n%s", progress.String())
	}
	got, err := Inspect(o.OutDir)
	if err != nil || got.InitrdSHA256 != a.InitrdSHA256 {
		t.Fatalf("Inspect after build = %+v, %v", got, err)
	}
	initrdTime := mtime(t, a.Initrd)

	progress.Reset()
	if _, err := build(ctx, o, src); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(progress.String(), "guest image up to date") || src.fetches != 1 || src.extracts != 1 {
		t.Errorf("second build was not a no-op (fetches %d, extracts %d):\n%s", src.fetches, src.extracts, progress.String())
	}
	if !mtime(t, a.Initrd).Equal(initrdTime) {
		t.Error("up-to-date build rewrote the initramfs")
	}

	writeStaticAgent(t, agent, "agent v2")
	b, err := build(ctx, o, src)
	if err != nil {
		t.Fatal(err)
	}
	if b.AgentSHA256 == a.AgentSHA256 || b.InitrdSHA256 == a.InitrdSHA256 || src.extracts != 1 || src.downloads != 1 {
		t.Errorf("new agent: sha %s -> %s, extracts %d, downloads %d", a.AgentSHA256, b.AgentSHA256, src.extracts, src.downloads)
	}

	o.Force = true
	progress.Reset()
	if _, err := build(ctx, o, src); err != nil {
		t.Fatal(err)
	}
	if src.extracts != 2 || src.downloads != 1 || !strings.Contains(progress.String(), "[2/4] using cached") {
		t.Errorf("forced build: extracts %d downloads %d:\n%s", src.extracts, src.downloads, progress.String())
	}

	// No temporary files are left behind, in the output or the cache.
	for _, d := range []string{o.OutDir, filepath.Join(state, "cache")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".tmp-") || strings.HasPrefix(e.Name(), ".extract-") {
				t.Errorf("left behind: %s/%s", d, e.Name())
			}
		}
	}
}

func TestBuildMissingModule(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "berth-agent")
	writeStaticAgent(t, agent, "a")
	out := filepath.Join(t.TempDir(), "guest")
	_, err := build(context.Background(), BuildOptions{OutDir: out, AgentBinary: agent, Modules: []string{"nosuch"}}, newFakeSource(t))
	if err == nil || !strings.Contains(err.Error(), "module nosuch") {
		t.Errorf("build with a missing module = %v", err)
	}
	if _, err := Inspect(out); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed build left an image Inspect accepts: %v", err)
	}
}

func mtime(t *testing.T, p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

func TestBuildWritesRootImageForAKernelThatBootsIt(t *testing.T) {
	for _, tool := range []string{mkfsErofs, "fsck.erofs", "dump.erofs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (erofs-utils; make deps installs it)", tool)
		}
	}
	ctx := context.Background()
	agent := filepath.Join(t.TempDir(), "berth-agent")
	writeStaticAgent(t, agent, "agent v1")
	src := newFakeSource(t)
	var cfg strings.Builder
	for _, o := range RootImageOptions {
		cfg.WriteString(o + "=y\n")
	}
	src.config = cfg.String()
	out := filepath.Join(t.TempDir(), "guest")
	o := BuildOptions{OutDir: out, AgentBinary: agent, Modules: []string{"virtiofs"}}
	a, err := build(ctx, o, src)
	if err != nil {
		t.Fatal(err)
	}
	if a.RootImage != filepath.Join(out, RootImageName) || a.RootImageSize == 0 || a.RootImageSize%rootImageAlign != 0 {
		t.Fatalf("root image %q of %d bytes, want %s/%s padded to %d", a.RootImage, a.RootImageSize, out, RootImageName, rootImageAlign)
	}
	// The image holds the initramfs's tree: the agent, /init, the modules
	// and their list.
	tree := filepath.Join(t.TempDir(), "x")
	if b, err := exec.Command("fsck.erofs", "--extract="+tree, a.RootImage).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v: %s", err, b)
	}
	want, _ := os.ReadFile(agent)
	if got, err := os.ReadFile(filepath.Join(tree, "berth/agent")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the image's /berth/agent differs from the agent (%v)", err)
	}
	if l, err := os.Readlink(filepath.Join(tree, "init")); err != nil || l != AgentDir+"/agent" {
		t.Errorf("/init -> %q (%v), want %s/agent", l, err, AgentDir)
	}
	if list, err := os.ReadFile(filepath.Join(tree, ModulesListPath)); err != nil || !strings.Contains(string(list), "virtiofs.ko") {
		t.Errorf("module list %q (%v)", list, err)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp"} {
		if fi, err := os.Stat(filepath.Join(tree, d)); err != nil || !fi.IsDir() {
			t.Errorf("no /%s mount point: %v", d, err)
		}
	}
	// Stored flat (layout 0, EROFS_INODE_FLAT_PLAIN): the only layout
	// erofs maps with DAX.
	if b, err := exec.Command("dump.erofs", "--path=/berth/agent", a.RootImage).CombinedOutput(); err != nil || !strings.Contains(string(b), "Layout: 0") {
		t.Errorf("dump.erofs /berth/agent: %v:\n%s", err, b)
	}
	if got, err := Inspect(out); err != nil || got.RootImage != a.RootImage {
		t.Fatalf("Inspect = %+v, %v", got, err)
	}

	// A kernel that cannot mount it gets none, and the old one goes: a
	// guest with guest.root = "auto" boots the initramfs.
	src.config = "CONFIG_VIRTIO_PMEM=m\n"
	o.Force = true
	b, err := build(ctx, o, src)
	if err != nil {
		t.Fatal(err)
	}
	if b.RootImage != "" {
		t.Errorf("root image %q for a kernel without the options", b.RootImage)
	}
	if _, err := os.Stat(a.RootImage); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the previous build's root image is still there: %v", err)
	}
	ents, _ := os.ReadDir(out)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".rootimage-") || strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestCheckAgentRefusesAnImageOfAnotherAgent(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"vmlinuz": "kernel", "initramfs.img": "initrd", "config": "cfg"} {
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	agent := filepath.Join(t.TempDir(), "berth-agent")
	os.WriteFile(agent, []byte("the agent"), 0o755)
	sum, _ := fileSHA256(agent)
	a := &Artefacts{
		Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initramfs.img"), Config: filepath.Join(dir, "config"),
		KernelSize: 6, InitrdSize: 6, AgentSHA256: sum,
	}
	if err := writeManifest(dir, a); err != nil {
		t.Fatal(err)
	}
	if err := CheckAgent(dir, agent); err != nil {
		t.Fatalf("the image's own agent: %v", err)
	}
	os.WriteFile(agent, []byte("another agent"), 0o755)
	if err := CheckAgent(dir, agent); err == nil || !strings.Contains(err.Error(), "berth guest build") {
		t.Errorf("another agent: %v, want an error naming the rebuild", err)
	}
}
