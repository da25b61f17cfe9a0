package sandbox

import (
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/transport"
	"github.com/berth-runtime/berth/internal/vmm"
)

// QEMU confinement (docs/security.md#qemu-confinement). A device-emulation
// bug must not be host root: each sandbox's QEMU runs as a uid of its own,
// with no capabilities, under QEMU's -sandbox seccomp filter. One uid per
// sandbox, not one shared user: processes of one uid can ptrace and read
// each other's memory, so a shared uid would let one compromised QEMU take
// over every other VM.
//
// What QEMU opens by path must be reachable by that uid and nothing else:
//
//	<sandbox>/          0711 root   traversable, not listable
//	<sandbox>/vmm/      0700 uid    the sockets QEMU creates (QMP, agent)
//	<sandbox>/virtiofsd.sock  owned by uid (connecting needs write access)
//	<sandbox>/efivars.fd      owned by uid (arm64 UEFI variable store)
//
// The console is a pipe it inherits, hot-plugged disks are descriptors
// passed over QMP; the kernel and initramfs are world-readable files.

// vmmDirName holds the sockets QEMU creates; it belongs to QEMU's uid.
const vmmDirName = "vmm"

// vmmUIDLockDir under run_dir holds one lock file per uid in use: a uid
// belongs to the process holding the flock on its file, which the kernel
// releases when that process dies, so a crashed shim leaks no uid.
const vmmUIDLockDir = "vmm-uids"

// vmmUser is the uid a sandbox's QEMU runs as, held for its lifetime.
type vmmUser struct {
	uid  uint32
	lock *os.File
	path string
}

// allocateVMMUser picks a free uid for sandbox id from the configured
// range, starting at a hash of the id so that sandboxes rarely probe.
func allocateVMMUser(cfg *config.Config, id string) (*vmmUser, error) {
	dir := filepath.Join(cfg.RunDir, vmmUIDLockDir)
	// run_dir itself stays searchable (0711): QEMU's uid passes through.
	if err := os.MkdirAll(cfg.RunDir, 0o711); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.RunDir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	base, count := cfg.Hypervisor.VMMUIDBase, cfg.Hypervisor.VMMUIDCount
	start := int64(h.Sum32()) % count
	for i := int64(0); i < count; i++ {
		uid := uint32(base + (start+i)%count)
		u, err := lockUID(dir, uid)
		if err != nil {
			return nil, err
		}
		if u != nil {
			return u, nil
		}
	}
	return nil, fmt.Errorf("all %d uids of hypervisor.vmm_uid_base/vmm_uid_count are in use by running sandboxes: raise hypervisor.vmm_uid_count: %w", count, errdefs.ErrUnavailable)
}

// lockUID takes uid if no other live process holds it; nil, nil if taken.
func lockUID(dir string, uid uint32) (*vmmUser, error) {
	path := filepath.Join(dir, strconv.FormatUint(uint64(uid), 10))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("uid lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("uid lock %s: %w", path, err)
	}
	// The previous holder unlinks its file before unlocking: if the path
	// no longer names the file locked, the lock is on a dead file.
	var fst, pst unix.Stat_t
	if unix.Fstat(int(f.Fd()), &fst) != nil || unix.Stat(path, &pst) != nil || fst.Ino != pst.Ino {
		f.Close()
		return nil, nil // being released: try the next uid
	}
	return &vmmUser{uid: uid, lock: f, path: path}, nil
}

// release gives the uid back; QEMU must have exited.
func (u *vmmUser) release() {
	if u == nil {
		return
	}
	os.Remove(u.path)
	u.lock.Close()
}

// credential is QEMU's: the uid as user and group, and supplementary
// groups only for the devices it needs (the group of /dev/kvm with KVM).
func (u *vmmUser) credential(accel vmm.Accel) *syscall.Credential {
	c := &syscall.Credential{Uid: u.uid, Gid: u.uid, Groups: []uint32{}}
	if accel == vmm.KVM {
		if st, err := os.Stat("/dev/kvm"); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && st.Mode().Perm()&0o060 == 0o060 {
				c.Groups = append(c.Groups, sys.Gid)
			}
		}
	}
	return c
}

// prepareVMMDir creates vmm/ owned by the uid (0700), or root's when QEMU
// runs as root.
func (s *Sandbox) prepareVMMDir(u *vmmUser) error {
	if u != nil {
		if err := checkTraversable(s.dir); err != nil {
			return err
		}
	}
	d := s.path(vmmDirName)
	if err := os.Mkdir(d, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	if u == nil {
		return nil
	}
	if err := os.Chown(d, int(u.uid), int(u.uid)); err != nil {
		return fmt.Errorf("give %s to QEMU's uid %d: %w", d, u.uid, err)
	}
	return nil
}

// giveToVMM hands a file QEMU opens by path (a socket it connects to, the
// UEFI variable store) to its uid; nothing when QEMU runs as root. Lchown:
// never follow a link someone put there.
func giveToVMM(u *vmmUser, path string) error {
	if u == nil {
		return nil
	}
	if err := os.Lchown(path, int(u.uid), int(u.uid)); err != nil {
		return fmt.Errorf("give %s to QEMU's uid %d: %w", path, u.uid, err)
	}
	return nil
}

// checkTraversable fails, naming the directory, when an unprivileged uid
// cannot reach dir: QEMU would otherwise fail with a bare "Permission
// denied" on its QMP socket.
func checkTraversable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("QEMU runs as an unprivileged uid, which cannot enter %s (mode %#o) on the way to run_dir: make it searchable by others (chmod o+x, as /run is), or set hypervisor.run_as_root = true: %w",
				d, st.Mode().Perm(), errdefs.ErrFailedPrecondition)
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

// writeSecret makes the sandbox secret and writes it where only QEMU (its
// uid, or root) can read it: QEMU passes it to the guest as a fw_cfg file,
// and the agent then accepts only streams that start with it. Neither the
// command line nor the environment carries it (both are readable by every
// local user in /proc).
func (s *Sandbox) writeSecret() ([]byte, error) {
	secret := make([]byte, transport.TokenBytes)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("sandbox secret: %w", err)
	}
	p := s.path(secretFileName)
	if err := os.WriteFile(p, secret, 0o400); err != nil {
		return nil, fmt.Errorf("sandbox secret: %w", err)
	}
	if err := giveToVMM(s.vmmUser, p); err != nil {
		return nil, err
	}
	return secret, nil
}
