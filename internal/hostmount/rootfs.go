package hostmount

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// MountPoint is a path inside a container's root file system where the
// guest's runc will mount something.
type MountPoint struct {
	// Path is absolute inside the container ("/etc/resolv.conf").
	Path string
	// Dir says whether it is a directory (else an empty file).
	Dir bool
}

// PrepareMountPoints creates the missing mount points of a container
// whose root file system the guest gets read-only. runc creates mount
// points in the root before it makes the root read-only; in the guest it
// cannot, since the host shares that root read-only (so that virtiofsd
// can never write it), so the host creates them first, as runc on the
// host would.
//
// Every path is resolved inside root (openat2 RESOLVE_IN_ROOT): a symlink
// in the image, or one a guest planted while the root was writable, stays
// inside the root file system. Existing nodes are left as they are.
func PrepareMountPoints(root string, points []MountPoint) error {
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open rootfs %s: %w", root, err)
	}
	defer unix.Close(rootFd)
	for _, p := range points {
		if err := prepareMountPoint(rootFd, p); err != nil {
			return fmt.Errorf("create mount point %s in read-only rootfs %s: %w", p.Path, root, err)
		}
	}
	return nil
}

const inRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// openInRoot resolves rel inside the root file system rootFd, following
// symlinks as the container would, but never out of the root.
func openInRoot(rootFd int, rel string, flags uint64) (int, error) {
	if rel == "" {
		return unix.Dup(rootFd)
	}
	return unix.Openat2(rootFd, rel, &unix.OpenHow{Flags: flags | unix.O_PATH | unix.O_CLOEXEC, Resolve: inRoot})
}

func prepareMountPoint(rootFd int, p MountPoint) error {
	clean := strings.TrimPrefix(path.Clean("/"+p.Path), "/")
	if clean == "" {
		return nil
	}
	parts := strings.Split(clean, "/")
	for i, name := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fd, err := openInRoot(rootFd, prefix, 0)
		if err == nil {
			unix.Close(fd)
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return err
		}
		parent, err := openInRoot(rootFd, strings.Join(parts[:i], "/"), unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		if i == len(parts)-1 && !p.Dir {
			var f int
			if f, err = unix.Openat(parent, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644); err == nil {
				unix.Close(f)
			}
		} else {
			err = unix.Mkdirat(parent, name, 0o755)
		}
		unix.Close(parent)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
	}
	fd, err := openInRoot(rootFd, clean, 0)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}
