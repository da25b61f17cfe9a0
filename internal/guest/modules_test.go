package guest

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A modules.dep excerpt in depmod's format (paths shortened), with the
// shape of Debian 6.1's virtio and vsock modules.
const cannedModulesDep = `kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vsock.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/net/dummy-net.ko: kernel/fs/fuse/fuse.ko
`

// overlay.ko is built in in this kernel; so is scsi_common, a dependency.
const cannedModulesBuiltin = `kernel/fs/overlayfs/overlay.ko
kernel/drivers/scsi/scsi_common.ko
`

func cannedIndex(t *testing.T, dep string) *moduleIndex {
	t.Helper()
	paths, deps, err := parseModulesDep(strings.NewReader(dep))
	if err != nil {
		t.Fatalf("parseModulesDep: %v", err)
	}
	builtin, err := parseModulesBuiltin(strings.NewReader(cannedModulesBuiltin))
	if err != nil {
		t.Fatal(err)
	}
	return &moduleIndex{kernelVersion: "6.1.0-test", paths: paths, builtin: builtin,
		deps: func(n string) ([]string, error) { return deps[n], nil }}
}

func TestParseModulesDep(t *testing.T) {
	paths, deps, err := parseModulesDep(strings.NewReader(cannedModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	if got := paths["virtio_pci"]; got != "kernel/drivers/virtio/virtio_pci.ko" {
		t.Errorf("path of virtio_pci = %q", got)
	}
	if got := paths["dummy_net"]; got != "kernel/drivers/net/dummy-net.ko" {
		t.Errorf("dummy-net.ko should be indexed as dummy_net, got %q", got)
	}
	if got, want := deps["virtiofs"], []string{"fuse", "virtio_ring", "virtio"}; !slices.Equal(got, want) {
		t.Errorf("deps of virtiofs = %v, want %v", got, want)
	}
	if _, _, err := parseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Error("malformed line accepted")
	}
}

func TestLoadOrder(t *testing.T) {
	ix := cannedIndex(t, cannedModulesDep)
	order, skipped, err := ix.loadOrder(DefaultModules, optionalModules)
	// virtio_mmio, virtio_blk and virtio_mem are not in the canned file.
	var me *missingModuleError
	if !errors.As(err, &me) || me.name != "virtio_mmio" {
		t.Fatalf("loadOrder(DefaultModules) = %v, %v, want virtio_mmio missing", order, err)
	}

	order, skipped, err = ix.loadOrder([]string{"virtio_pci", "virtio_console", "virtiofs", "overlay", "vmw_vsock_virtio_transport", "virtio-scsi"}, nil)
	if err != nil {
		t.Fatalf("loadOrder: %v", err)
	}
	if len(skipped) != 0 {
		t.Errorf("skipped = %v", skipped)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Errorf("%s listed twice in %v", m, order)
		}
		pos[m] = i
	}
	for _, m := range []string{"overlay", "scsi_common"} {
		if _, ok := pos[m]; ok {
			t.Errorf("built-in %s in load order %v", m, order)
		}
	}
	_, deps, _ := parseModulesDep(strings.NewReader(cannedModulesDep))
	for m := range pos {
		for _, d := range deps[m] {
			if ix.builtin[d] {
				continue
			}
			if dp, ok := pos[d]; !ok || dp > pos[m] {
				t.Errorf("%s (at %d) needs %s (at %d, present %v): %v", m, pos[m], d, dp, ok, order)
			}
		}
	}
	want := []string{"virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring", "virtio_pci",
		"virtio_console", "fuse", "virtiofs", "vsock", "vmw_vsock_virtio_transport_common",
		"vmw_vsock_virtio_transport", "scsi_mod", "virtio_scsi"}
	if !slices.Equal(order, want) {
		t.Errorf("order = %v\nwant    %v", order, want)
	}
}

func TestLoadOrderOptionalMissing(t *testing.T) {
	// virtio_scsi's dependency scsi_mod is missing: the optional module is
	// skipped with its whole subtree, and nothing of it is left behind.
	dep := strings.ReplaceAll(cannedModulesDep, "kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n", "")
	ix := cannedIndex(t, dep)
	order, skipped, err := ix.loadOrder([]string{"virtio_scsi", "fuse"}, map[string]bool{"virtio_scsi": true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(skipped, []string{"virtio_scsi"}) || !slices.Equal(order, []string{"fuse"}) {
		t.Errorf("order %v skipped %v, want [fuse] [virtio_scsi]", order, skipped)
	}
	// The same module asked for explicitly is an error naming both.
	_, _, err = ix.loadOrder([]string{"virtio_scsi"}, nil)
	if err == nil || !strings.Contains(err.Error(), "module scsi_mod (needed by virtio_scsi)") || !strings.Contains(err.Error(), "6.1.0-test") {
		t.Errorf("missing dependency error = %v", err)
	}
}

func TestLoadOrderCycle(t *testing.T) {
	ix := cannedIndex(t, "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko: kernel/a.ko\n")
	_, _, err := ix.loadOrder([]string{"a"}, nil)
	if err == nil || !strings.Contains(err.Error(), "cycle") || !strings.Contains(err.Error(), "a -> b -> c -> a") {
		t.Errorf("cycle error = %v", err)
	}
}

func TestParseModinfoDepends(t *testing.T) {
	info := []byte("license=GPL\x00depends=virtio_ring,virtio-pci-modern-dev,,virtio\x00retpoline=Y\x00intree=Y\x00name=virtio_pci\x00vermagic=6.1.0\x00")
	if got, want := parseModinfoDepends(info), []string{"virtio_ring", "virtio_pci_modern_dev", "virtio"}; !slices.Equal(got, want) {
		t.Errorf("depends = %v, want %v", got, want)
	}
	if got := parseModinfoDepends([]byte("depends=\x00name=fuse\x00")); len(got) != 0 {
		t.Errorf("empty depends = %v", got)
	}
}

// TestModuleIndexFromModinfo builds a tree without modules.dep, as Debian's
// packages ship it, and checks that dependencies come from the modules'
// .modinfo sections.
func TestModuleIndexFromModinfo(t *testing.T) {
	root := t.TempDir()
	tree := writeFakeKernelTree(t, root, "6.1.0-test-amd64")
	ix, err := openModuleIndex(tree, "6.1.0-test-amd64")
	if err != nil {
		t.Fatal(err)
	}
	order, _, err := ix.loadOrder([]string{"virtiofs", "overlay", "virtio_pci"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"fuse", "virtio", "virtio_ring", "virtiofs", "virtio_pci_modern_dev", "virtio_pci"}; !slices.Equal(order, want) {
		t.Errorf("order = %v, want %v (overlay is built in)", order, want)
	}

	// A compressed module cannot be read without xz/zstd: say so.
	comp := filepath.Join(tree, "kernel/extra/comp.ko.xz")
	if err := os.MkdirAll(filepath.Dir(comp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(comp, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ix, _ = openModuleIndex(tree, "6.1.0-test-amd64")
	if _, _, err := ix.loadOrder([]string{"comp"}, nil); err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("compressed module error = %v", err)
	}
}
