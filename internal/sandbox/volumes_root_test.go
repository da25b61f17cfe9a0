package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/hostmount"
	"github.com/berth-runtime/berth/internal/oci"
)

// TestContainersMountingOneSourceShareOneBind: two containers mounting the
// same host directory with the same options get one bind and one guest
// path (so the guest has one inode per file, and a unix socket in an
// emptyDir connects across containers); other options get a bind of their
// own; the bind stays until the last container using it is released, and
// nothing is left after. Needs root (it bind-mounts).
func TestContainersMountingOneSourceShareOneBind(t *testing.T) {
	if os.Geteuid() != 0 || testing.Short() {
		t.Skip("bind-mounts: needs root, skipped in -short mode")
	}
	dir := t.TempDir()
	tree, err := hostmount.New(filepath.Join(dir, "tree"), filepath.Join(dir, "share"))
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	src := filepath.Join(dir, "emptydir")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	link := filepath.Join(dir, "link")
	os.Symlink(src, link)

	var v sharedVolumes
	rw := hostmount.BindOptions{Recursive: true}
	a, err := v.share(tree, "a", src, rw)
	if err != nil {
		t.Fatal(err)
	}
	b, err := v.share(tree, "b", link, rw) // the same directory by another path
	if err != nil {
		t.Fatal(err)
	}
	ro, err := v.share(tree, "b", src, hostmount.BindOptions{Recursive: true, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if a != b || a == ro || !strings.HasPrefix(a, oci.GuestSharedDir+"/.volumes/") {
		t.Fatalf("guest paths a %q, b %q, read-only %q: want a == b below %s/.volumes, read-only apart", a, b, ro, oci.GuestSharedDir)
	}
	hostPath := func(guest string) string {
		return filepath.Join(tree.Share(), strings.TrimPrefix(guest, oci.GuestSharedDir+"/"))
	}
	if _, err := os.Stat(filepath.Join(hostPath(a), "f")); err != nil {
		t.Fatalf("the shared bind does not show the source: %v", err)
	}
	if err := v.release(tree, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(hostPath(a), "f")); err != nil {
		t.Fatalf("releasing one of two users unmounted the bind: %v", err)
	}
	if err := v.release(tree, "b"); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{a, ro} {
		if _, err := os.Lstat(hostPath(g)); !os.IsNotExist(err) {
			t.Errorf("%s still in the share after its last user was released: %v", g, err)
		}
	}
	if got := hostmount.MountsUnder(filepath.Join(tree.Dir(), ".volumes")); len(got) != 0 {
		t.Errorf("mounts left in the tree: %q", got)
	}
	if _, err := os.Stat(filepath.Join(src, "f")); err != nil {
		t.Errorf("the source was touched: %v", err)
	}
}
