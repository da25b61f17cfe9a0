package sandbox

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRemoveDirRefusesMountedTrees is the guard that keeps teardown from
// deleting a user's root file system through a bind mount that failed to
// detach. It needs root (it mounts tmpfs).
func TestRemoveDirRefusesMountedTrees(t *testing.T) {
	if os.Geteuid() != 0 || testing.Short() {
		t.Skip("mounts tmpfs: needs root, skipped in -short mode")
	}
	dir := t.TempDir()
	mnt := filepath.Join(dir, "shared", "c 1", "rootfs") // a space: mountinfo escapes it
	os.MkdirAll(mnt, 0o755)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, ""); err != nil {
		t.Skip(err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	user := filepath.Join(mnt, "precious")
	os.WriteFile(user, []byte("data"), 0o644)
	if got := mountsUnder(dir); len(got) != 1 || got[0] != mnt {
		t.Fatalf("mountsUnder = %q, want [%q]", got, mnt)
	}
	if err := removeDir(dir); err == nil {
		t.Fatal("removeDir deleted a tree with a mount inside")
	}
	if _, err := os.Stat(user); err != nil {
		t.Fatalf("the mounted file system was touched: %v", err)
	}
	unix.Unmount(mnt, unix.MNT_DETACH)
	if err := removeDir(dir); err != nil {
		t.Fatalf("removeDir after unmount: %v", err)
	}
}
