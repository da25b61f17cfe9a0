package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"

	"github.com/berth-runtime/berth/internal/hostmount"
	"github.com/berth-runtime/berth/internal/oci"
)

// sharedVolumes binds each host source a sandbox's containers mount into
// the share once, and gives every container that mounts it the same guest
// path.
//
// One bind per container would give the guest one file system per
// container: virtiofsd keys its inodes by host mount, and the guest
// kernel gives each announced submount its own superblock. The containers
// of a pod would then see the same files through different inodes, and
// what lives in the inode rather than in the file breaks between them: a
// unix socket one sidecar listens on in an emptyDir refuses the other
// container's connect (the service mesh's, the SQL proxy's, php-fpm's
// socket), and locks do not exclude. Under runc the containers share the
// host's one inode; with one bind per source they share the guest's one.
//
// A source is the same when it is the same host inode mounted with the
// same options: a read-only mount of a volume another container mounts
// read-write gets a bind of its own.
type sharedVolumes struct {
	mu      sync.Mutex
	byKey   map[volumeKey]*sharedVolume
	byOwner map[string][]volumeKey // container id -> the volumes it mounts, in mount order
	seq     int
}

type volumeKey struct {
	dev, ino uint64
	opts     hostmount.BindOptions
}

type sharedVolume struct {
	mnt   hostmount.Mount
	rel   string // beneath the tree
	guest string // the guest's path
	users int
}

// share binds src into the tree for container id, or reuses the bind
// another container of the sandbox made of the same source with the same
// options, and returns the guest's path to it.
func (v *sharedVolumes) share(tree *hostmount.Tree, id, src string, opts hostmount.BindOptions) (string, error) {
	st, err := os.Stat(src)
	if err != nil {
		return "", err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("stat %s: no device and inode number", src)
	}
	key := volumeKey{dev: uint64(sys.Dev), ino: sys.Ino, opts: opts}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.byKey == nil {
		v.byKey, v.byOwner = map[volumeKey]*sharedVolume{}, map[string][]volumeKey{}
	}
	if sv, ok := v.byKey[key]; ok {
		sv.users++
		v.byOwner[id] = append(v.byOwner[id], key)
		return sv.guest, nil
	}
	v.seq++
	guest := oci.GuestVolumePath(fmt.Sprintf("%d-%s", v.seq, path.Base(src)))
	rel := strings.TrimPrefix(guest, oci.GuestSharedDir+"/")
	mnt, err := tree.Bind(src, rel, opts)
	if err != nil {
		return "", err
	}
	v.byKey[key] = &sharedVolume{mnt: mnt, rel: rel, guest: guest, users: 1}
	v.byOwner[id] = append(v.byOwner[id], key)
	return guest, nil
}

// release gives up container id's uses of its volumes, last first, and
// unmounts each one no other container uses.
func (v *sharedVolumes) release(tree *hostmount.Tree, id string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	keys := v.byOwner[id]
	delete(v.byOwner, id)
	var errs []error
	for i := len(keys) - 1; i >= 0; i-- {
		sv := v.byKey[keys[i]]
		if sv == nil {
			continue
		}
		if sv.users--; sv.users > 0 {
			continue
		}
		delete(v.byKey, keys[i])
		if err := tree.Unmount(sv.mnt); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := tree.RemoveAll(sv.rel); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
