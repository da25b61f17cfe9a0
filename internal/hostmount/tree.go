// Package hostmount keeps a sandbox's host-side mount tree out of the
// guest's reach.
//
// The guest reads and writes its root file systems and volumes through
// virtiofsd, which serves a directory of the host. If the host made its
// bind mounts in that same directory, by path, a guest could rename a
// directory that holds a mount point and plant a symlink in its place: the
// host's next bind or unmount would then act on a host path of the guest's
// choosing (Kata's CVE-2020-2026). So there are two directories:
//
//   - the host-only tree (<sandbox>/mounts), where every bind is made and
//     undone. It is never served to anyone; the guest cannot name it.
//   - the share (<sandbox>/shared), which virtiofsd serves: a bind of the
//     host-only tree, read-only, that receives every bind made there by
//     mount propagation (it is a slave of the tree).
//
// The share's own mount is read-only, so the guest cannot create, rename or
// remove anything in the tree's structure (the directories that hold mount
// points). The binds propagated into it keep their own flags: a container's
// root file system stays writable when its spec says so, a `ro` volume or a
// read-only root is read-only on the host before virtiofsd ever sees it
// (the flags are set on the detached mount, before it is attached and
// propagated), and every bind is nosuid and nodev.
//
// Mount points are created with fd-relative operations that refuse
// symlinks and mount crossings (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
// RESOLVE_NO_XDEV), binds are attached to those fds (move_mount), and a
// mount is undone only when mountinfo still shows it, by its mount ID, where
// it was made (umount2 UMOUNT_NOFOLLOW).
package hostmount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Tree is one sandbox's host-only mount tree and its read-only share.
type Tree struct {
	dir   string
	share string
	// root is an O_PATH descriptor of the tree's own mount: every
	// mount point is resolved beneath it.
	root *os.File
}

// Mount is one bind made in the tree, as recorded when it was made.
type Mount struct {
	// Path is the mount point's host path inside the host-only tree.
	Path string
	// ID is the kernel's mount ID (mountinfo's first field): a mount is
	// undone only if it is still this one.
	ID uint64
}

// BindOptions say how a bind is made. Every bind is recursive (submounts
// of the source come along), nosuid and nodev.
type BindOptions struct {
	// Recursive binds the mounts below src too ("rbind"); otherwise only
	// src's own mount is bound, as runc does for "bind".
	Recursive bool
	// ReadOnly makes the bind read-only. Submounts keep their own flags,
	// as runc leaves them for "rbind,ro" (a Kubernetes readOnly volume
	// with a writable mount inside stays writable there), unless
	// RecursiveReadOnly ("rro") asks for every one to be read-only.
	ReadOnly          bool
	RecursiveReadOnly bool
}

// New creates the host-only tree at dir and its read-only share at share
// (both must not be mounted yet). Close undoes it.
func New(dir, share string) (_ *Tree, retErr error) {
	for _, d := range []string{dir, share} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// The tree is a mount of its own with shared propagation, so that
	// binds made in it reach the share (and virtiofsd's mount namespace,
	// whose copy of the share is a slave of the same group).
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind-mount host mount tree %s: %w", dir, err)
	}
	defer func() {
		if retErr != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	}()
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("make %s private: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return nil, fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	if err := unix.Mount(dir, share, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind-mount share %s: %w", share, err)
	}
	defer func() {
		if retErr != nil {
			unix.Unmount(share, unix.MNT_DETACH)
		}
	}()
	// A slave receives the tree's binds but sends nothing back.
	if err := unix.Mount("", share, "", unix.MS_SLAVE, ""); err != nil {
		return nil, fmt.Errorf("make %s a slave mount: %w", share, err)
	}
	// Read-only for the share's own mount only: the binds that arrive
	// by propagation keep the flags they were made with.
	if err := unix.Mount("", share, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return nil, fmt.Errorf("make share %s read-only: %w", share, err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	return &Tree{dir: dir, share: share, root: os.NewFile(uintptr(fd), dir)}, nil
}

// Dir is the host-only tree's path.
func (t *Tree) Dir() string { return t.dir }

// Share is the path of the read-only share that virtiofsd serves.
func (t *Tree) Share() string { return t.share }

// Bind bind-mounts the host file or directory src at rel, a relative path
// inside the tree, creating rel (and its parents) as the same kind of node.
// src is the host path a spec names, resolved as runc resolves a bind
// source; rel is resolved beneath the tree and never through a symlink or
// another mount.
func (t *Tree) Bind(src, rel string, opts BindOptions) (Mount, error) {
	if !filepath.IsLocal(rel) || filepath.Clean(rel) != rel {
		return Mount{}, fmt.Errorf("mount point %q is not a clean relative path", rel)
	}
	st, err := os.Stat(src)
	if err != nil {
		return Mount{}, err
	}
	// Clone the source first: the flags are set on the detached copy,
	// so the bind is never visible, to the share or to virtiofsd, with
	// more rights than it should have.
	cloneFlags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC
	if opts.Recursive || opts.RecursiveReadOnly {
		cloneFlags |= unix.AT_RECURSIVE
	}
	treeFd, err := unix.OpenTree(unix.AT_FDCWD, src, uint(cloneFlags))
	if err != nil {
		return Mount{}, fmt.Errorf("clone mount of %s: %w", src, err)
	}
	defer unix.Close(treeFd)
	// nosuid,nodev (and "rro") hold for every mount of the clone; a
	// plain "ro" only for its top.
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV, Propagation: unix.MS_SLAVE}
	if opts.RecursiveReadOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(treeFd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return Mount{}, fmt.Errorf("set nosuid,nodev on the bind of %s: %w", src, err)
	}
	if opts.ReadOnly && !opts.RecursiveReadOnly {
		top := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(treeFd, "", unix.AT_EMPTY_PATH, &top); err != nil {
			return Mount{}, fmt.Errorf("make the bind of %s read-only: %w", src, err)
		}
	}
	var stx unix.Statx_t
	if err := unix.Statx(treeFd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil || stx.Mask&unix.STATX_MNT_ID == 0 {
		return Mount{}, fmt.Errorf("mount ID of the bind of %s: %v (Linux 5.8 or later is needed)", src, err)
	}
	target, err := t.mountPoint(rel, st.IsDir())
	if err != nil {
		return Mount{}, fmt.Errorf("mount point %s: %w", rel, err)
	}
	defer unix.Close(target)
	if err := unix.MoveMount(treeFd, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return Mount{}, fmt.Errorf("bind-mount %s on %s: %w", src, rel, err)
	}
	return Mount{Path: filepath.Join(t.dir, rel), ID: stx.Mnt_id}, nil
}

// resolveFlags keep every lookup inside the tree's own mount, without
// symlinks: nothing below the tree's root can redirect a mount point.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS

func (t *Tree) openBeneath(dirfd int, name string, flags uint64) (int, error) {
	return unix.Openat2(dirfd, name, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC | unix.O_NOFOLLOW, Resolve: resolveFlags})
}

// mountPoint creates rel (a directory, or an empty file) and its parent
// directories beneath the tree and returns an O_PATH descriptor of it.
func (t *Tree) mountPoint(rel string, dir bool) (int, error) {
	parts := strings.Split(rel, string(filepath.Separator))
	cur, err := unix.Dup(int(t.root.Fd()))
	if err != nil {
		return -1, err
	}
	for i, name := range parts {
		last := i == len(parts)-1
		if last && !dir {
			fd, err := unix.Openat(cur, name, unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
			if err != nil {
				unix.Close(cur)
				return -1, err
			}
			unix.Close(fd)
		} else if err := unix.Mkdirat(cur, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(cur)
			return -1, err
		}
		flags := uint64(unix.O_PATH)
		if !last || dir {
			flags |= unix.O_DIRECTORY
		}
		next, err := t.openBeneath(cur, name, flags)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	var st unix.Stat_t
	if err := unix.Fstat(cur, &st); err != nil || (st.Mode&unix.S_IFMT == unix.S_IFDIR) != dir {
		unix.Close(cur)
		return -1, fmt.Errorf("is not a %s", map[bool]string{true: "directory", false: "file"}[dir])
	}
	return cur, nil
}

// ErrMoved says a recorded mount is no longer where it was made: the tree
// was changed behind the host's back, and the host refuses to act on it.
var ErrMoved = errors.New("mount is no longer where it was made")

// Unmount undoes a bind made by Bind. A mount that is already gone is not
// an error (teardown may run twice); one that mountinfo shows elsewhere,
// or covered by another mount, is left alone and reported (ErrMoved).
func (t *Tree) Unmount(m Mount) error {
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	var found *mountinfo.Info
	for _, in := range infos {
		if uint64(in.ID) == m.ID {
			found = in
		}
	}
	if found == nil {
		return nil
	}
	if found.Mountpoint != m.Path {
		return fmt.Errorf("mount %d made at %s is now at %s: %w", m.ID, m.Path, found.Mountpoint, ErrMoved)
	}
	for _, in := range infos {
		if in.Mountpoint == m.Path && in.Parent == found.ID {
			return fmt.Errorf("mount %d at %s is covered by mount %d: %w", m.ID, m.Path, in.ID, ErrMoved)
		}
	}
	if err := unix.Unmount(m.Path, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", m.Path, err)
	}
	return nil
}

// RemoveAll removes rel from the tree once nothing is mounted at or below
// it: removing through a bind that failed to detach would destroy the
// user's files.
func (t *Tree) RemoveAll(rel string) error {
	if !filepath.IsLocal(rel) {
		return fmt.Errorf("%q is not a relative path", rel)
	}
	return RemoveUnmounted(filepath.Join(t.dir, rel))
}

// Close unmounts the share and the tree (with whatever is still mounted
// in them, detached lazily). The directories stay for the caller to
// remove.
func (t *Tree) Close() error {
	t.root.Close()
	var errs []error
	for _, d := range []string{t.share, t.dir} {
		if err := unix.Unmount(d, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// MountsUnder lists mount points at or below dir, deepest first.
func MountsUnder(dir string) []string {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(infos))
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// RemoveUnmounted deletes dir, but only once nothing is mounted below it.
// os.RemoveAll never follows symlinks.
func RemoveUnmounted(dir string) error {
	if m := MountsUnder(dir); len(m) > 0 {
		return fmt.Errorf("not removing %s: still mounted: %s", dir, strings.Join(m, ", "))
	}
	return os.RemoveAll(dir)
}
