package hostmount

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// These tests mount: they need root and are skipped in -short mode.
func newTree(t *testing.T) (*Tree, string) {
	t.Helper()
	if os.Geteuid() != 0 || testing.Short() {
		t.Skip("mounts: needs root, skipped in -short mode")
	}
	dir := t.TempDir()
	tr, err := New(filepath.Join(dir, "mounts"), filepath.Join(dir, "shared"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tr.Close()
		if m := MountsUnder(dir); len(m) > 0 {
			t.Errorf("left mounted: %v", m)
		}
	})
	return tr, dir
}

func mountAt(t *testing.T, path string) *mountinfo.Info {
	t.Helper()
	infos, err := mountinfo.GetMounts(func(in *mountinfo.Info) (skip, stop bool) { return in.Mountpoint != path, false })
	if err != nil || len(infos) == 0 {
		t.Fatalf("nothing mounted at %s: %v", path, err)
	}
	return infos[len(infos)-1]
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// TestShareIsReadOnlyBindsKeepTheirFlags: through the share, the tree's
// structure cannot be changed; a rw bind stays writable, a ro bind is
// read-only, and every bind is nosuid,nodev, in the share as in the tree.
func TestShareIsReadOnlyBindsKeepTheirFlags(t *testing.T) {
	tr, dir := newTree(t)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	roSrc := filepath.Join(dir, "ro-src")
	os.MkdirAll(roSrc, 0o755)
	fileSrc := filepath.Join(dir, "hosts")
	os.WriteFile(fileSrc, []byte("127.0.0.1 x\n"), 0o644)

	rw, err := tr.Bind(src, "c1/rootfs", BindOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := tr.Bind(roSrc, "c1/mounts/0-vol", BindOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := tr.Bind(fileSrc, "c1/mounts/1-hosts", BindOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	share := tr.Share()
	// The share's structure is read-only.
	for _, op := range []func() error{
		func() error { return os.Mkdir(filepath.Join(share, "evil"), 0o755) },
		func() error {
			return os.Rename(filepath.Join(share, "c1", "mounts"), filepath.Join(share, "c1", "moved"))
		},
		func() error { return os.Symlink("/etc", filepath.Join(share, "c1", "link")) },
		func() error { return os.RemoveAll(filepath.Join(share, "c1", "mounts")) },
	} {
		if err := op(); !errors.Is(err, unix.EROFS) && !errors.Is(err, unix.EBUSY) {
			t.Errorf("changing the share's structure: %v, want EROFS", err)
		}
	}
	// A writable rootfs is writable through the share.
	if err := os.WriteFile(filepath.Join(share, "c1", "rootfs", "file"), []byte("x"), 0o644); err != nil {
		t.Errorf("write to the rw rootfs through the share: %v", err)
	}
	if _, err := os.Stat(filepath.Join(src, "file")); err != nil {
		t.Errorf("the write did not reach the source: %v", err)
	}
	// A ro volume is not.
	if err := os.WriteFile(filepath.Join(share, "c1", "mounts", "0-vol", "file"), []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to a ro volume through the share: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(share, "c1", "mounts", "1-hosts"), []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to a ro file bind through the share: %v, want EROFS", err)
	}
	for _, m := range []Mount{rw, ro, f} {
		for _, p := range []string{m.Path, filepath.Join(share, strings.TrimPrefix(m.Path, tr.Dir()))} {
			in := mountAt(t, p)
			if !hasOpt(in.Options, "nosuid") || !hasOpt(in.Options, "nodev") {
				t.Errorf("%s is mounted %s, want nosuid,nodev", p, in.Options)
			}
			if wantRO := m != rw; hasOpt(in.Options, "ro") != wantRO {
				t.Errorf("%s is mounted %s, want ro=%v", p, in.Options, wantRO)
			}
		}
	}
	for _, m := range []Mount{f, ro, rw} {
		if err := tr.Unmount(m); err != nil {
			t.Fatal(err)
		}
		if err := tr.Unmount(m); err != nil {
			t.Fatalf("a second unmount is not an error: %v", err)
		}
	}
	if err := tr.RemoveAll("c1"); err != nil {
		t.Fatal(err)
	}
	if m := MountsUnder(filepath.Join(share, "c1")); len(m) > 0 {
		t.Fatalf("unmounts did not reach the share: %v", m)
	}
}

// TestMountPointsNeverFollowSymlinks: a symlink or a foreign mount in the
// tree's path (which the guest cannot plant, but a bug might) stops the
// bind instead of redirecting it outside the tree.
func TestMountPointsNeverFollowSymlinks(t *testing.T) {
	tr, dir := newTree(t)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(outside, 0o755)
	os.Symlink(outside, filepath.Join(tr.Dir(), "c1"))
	os.Symlink(filepath.Join(dir, "hostfile"), filepath.Join(tr.Dir(), "dangling"))
	for _, rel := range []string{"c1/rootfs", "c1", "dangling", "../outside", "/abs", "a/../../outside"} {
		if _, err := tr.Bind(src, rel, BindOptions{}); err == nil {
			t.Errorf("Bind at %q followed a path out of the tree", rel)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "hostfile")); !os.IsNotExist(err) {
		t.Errorf("a dangling symlink was followed to create %s", filepath.Join(dir, "hostfile"))
	}
	if e, _ := os.ReadDir(outside); len(e) > 0 {
		t.Errorf("something was created outside the tree: %v", e)
	}
	if m := MountsUnder(outside); len(m) > 0 {
		t.Errorf("mounted outside the tree: %v", m)
	}
}

// TestUnmountChecksTheRecordedMount: the host unmounts only the mount it
// made, where it made it; a mount stacked over it is left alone.
func TestUnmountChecksTheRecordedMount(t *testing.T) {
	tr, dir := newTree(t)
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	m, err := tr.Bind(src, "c1/rootfs", BindOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := mountAt(t, m.Path); uint64(got.ID) != m.ID {
		t.Fatalf("recorded mount ID %d, mountinfo says %d", m.ID, got.ID)
	}
	if err := unix.Mount("tmpfs", m.Path, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := tr.Unmount(m); !errors.Is(err, ErrMoved) {
		t.Fatalf("Unmount of a covered mount = %v, want ErrMoved", err)
	}
	if mountAt(t, m.Path).FSType != "tmpfs" {
		t.Fatal("the covering mount was unmounted")
	}
	unix.Unmount(m.Path, 0)
	if err := tr.Unmount(m); err != nil {
		t.Fatal(err)
	}
	// A record of a mount that no longer exists is a no-op, even if
	// something else is mounted at its path now.
	if err := unix.Mount("tmpfs", m.Path, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(m.Path, 0)
	if err := tr.Unmount(Mount{Path: m.Path, ID: 1<<40 + 7}); err != nil {
		t.Fatal(err)
	}
	if mountAt(t, m.Path).FSType != "tmpfs" {
		t.Fatal("an unrelated mount at a recorded path was unmounted")
	}
}

// TestPrepareMountPointsStaysInRoot: mount points of a read-only rootfs
// are created inside it, symlinks in the image resolved inside it too.
func TestPrepareMountPointsStaysInRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("touches the file system")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(outside, 0o755)
	// An absolute symlink means <root>/<target> in the container.
	os.Symlink(outside, filepath.Join(root, "abs"))
	os.MkdirAll(filepath.Join(root, outside), 0o755)
	os.Symlink("../../../..", filepath.Join(root, "up")) // climbs: clamped at the root
	os.Symlink("/etc", filepath.Join(root, "etc-link"))
	err := PrepareMountPoints(root, []MountPoint{
		{Path: "/etc/resolv.conf"}, {Path: "/proc", Dir: true}, {Path: "/dev/shm", Dir: true},
		{Path: "/abs/planted", Dir: true}, {Path: "/up/evil"}, {Path: "/etc-link/hosts"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"etc/resolv.conf", "proc", "dev/shm", "evil", "etc/hosts", strings.TrimPrefix(outside, "/") + "/planted"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s was not created inside the root: %v", p, err)
		}
	}
	if e, _ := os.ReadDir(outside); len(e) > 0 {
		t.Errorf("created outside the root: %v", e)
	}
	if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
		t.Error("a climbing symlink led out of the root")
	}
}
