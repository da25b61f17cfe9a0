package agent

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/oci"
)

// volumeMounts holds, in the agent's own mount namespace, the virtio-fs
// submounts of the volumes the host shares once for all the containers of
// a pod that mount them (oci.GuestVolumePath), for as long as one of
// those containers exists.
//
// The kernel mounts an announced virtio-fs submount when a path first
// crosses it, in the mount namespace of whoever crosses it, and every such
// automount is a superblock of its own. Left to runc, each container would
// cross it in its own new namespace, so the containers of a pod would see
// one volume through different inodes (a unix socket in an emptyDir
// refused the other container's connect). Crossed here first, every
// container's namespace, copied from the agent's, has the same one. The
// agent's copy outlives the containers' own, so it is unmounted when the
// last container using it is deleted: a crash-looping container gets a
// fresh bind from the host at each restart, and the old automounts would
// pile up in the guest (and keep virtiofsd's descriptors to the host's
// unmounted binds open).
//
// The agent's copy is a shared mount (a bind of itself first, where the
// host's bind did not reach the guest as a submount of its own), so mount
// propagation between the pod's containers works as on one host: a mount
// a container makes in a Bidirectional (rshared) volume reaches the
// agent's copy and, from there, every container that mounts the volume
// HostToContainer (rslave) or Bidirectional; runc applies each mount's own
// propagation to its bind, so a container with None (rprivate) sees none
// of it. Mounts made in the guest never reach the host: that boundary is
// the VM's.
type volumeMounts struct {
	mu    sync.Mutex
	users map[string]int // guest path -> containers holding it
	// unmount detaches a submount; unix.Unmount if nil (tests replace it).
	unmount func(path string) error
	// cross mounts a submount by opening it; crossDir if nil.
	cross func(path string) (bool, error)
	// share makes the crossed directory a shared mount; shareMount if nil.
	share func(path string) error
}

// reach crosses the shared volumes among a container's mounts and counts
// the container as a user of each; it returns the paths to give back with
// release when the container is deleted (or its create fails).
func (v *volumeMounts) reach(mounts []specs.Mount) ([]string, error) {
	prefix := oci.GuestVolumePath("") + "/"
	cross, share := v.cross, v.share
	if cross == nil {
		cross = crossDir
	}
	if share == nil {
		share = shareMount
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var held []string
	for _, m := range mounts {
		if !strings.HasPrefix(m.Source, prefix) || slices.Contains(held, m.Source) {
			continue
		}
		dir, err := cross(m.Source)
		if err != nil {
			v.releaseLocked(held)
			return nil, fmt.Errorf("shared volume for %s: %v: %w", m.Destination, err, errdefs.ErrFailedPrecondition)
		}
		if !dir {
			continue // files are never submounts
		}
		if v.users[m.Source] == 0 {
			if err := share(m.Source); err != nil {
				v.releaseLocked(held)
				return nil, fmt.Errorf("shared volume for %s: %w", m.Destination, err)
			}
		}
		if v.users == nil {
			v.users = map[string]int{}
		}
		v.users[m.Source]++
		held = append(held, m.Source)
	}
	return held, nil
}

// release gives back paths from reach, and detaches each one no other
// container holds.
func (v *volumeMounts) release(paths []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.releaseLocked(paths)
}

func (v *volumeMounts) releaseLocked(paths []string) {
	unmount := v.unmount
	if unmount == nil {
		unmount = func(p string) error { return unix.Unmount(p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW) }
	}
	for _, p := range paths {
		if v.users[p]--; v.users[p] > 0 {
			continue
		}
		delete(v.users, p)
		// EINVAL: nothing is mounted there (the host's bind held no
		// other file system); ENOENT: the host removed it already.
		if err := unmount(p); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			logrus.WithError(err).WithField("path", p).Warn("detach shared volume")
		}
	}
}

// crossDir opens path if it is a directory, which mounts a virtio-fs
// submount there: stat(2) does not cross an automount point it ends on
// (Linux 4.14+), opening the directory does.
func crossDir(path string) (bool, error) {
	st, err := os.Stat(path)
	if err != nil || !st.IsDir() {
		return false, err
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	return true, f.Close()
}

// shareMount makes path a shared mount of its own.
func shareMount(path string) error {
	mounted, err := mountinfo.Mounted(path)
	if err != nil {
		return err
	}
	if !mounted {
		if err := unix.Mount(path, path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", path, err)
		}
	}
	if err := unix.Mount("", path, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", path, err)
	}
	return nil
}
