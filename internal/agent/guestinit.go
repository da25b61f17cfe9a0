package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/agent/kmod"
)

// ModulesList is the file `berth guest build` writes: modules to load, in
// dependency order.
const ModulesList = "/etc/berth/modules.load"

// InitramfsAgentDir is the initramfs directory holding the agent binary;
// /init is a symlink into it (guest.AgentDir, which writes it; a test
// checks they agree).
const InitramfsAgentDir = "/berth"

// RunService is the agent service: the process that PID 1 forks before
// the Go runtime starts (package pid1, which keeps PID 1 itself reaping
// orphans). It prepares the system, the early mounts, the move off the
// initramfs, modules, then runs serve until it fails, and exits; PID 1
// then powers the VM off.
//
// Why two processes: libcontainer waits for the processes it starts, while
// PID 1 must reap every orphan in the guest. If one process did both, a
// wait4(-1) reaper would steal exit statuses from libcontainer. With the
// service apart from PID 1, containers are the service's children
// (libcontainer reaps them) and orphans are re-parented to PID 1.
func RunService(serve func(context.Context) error) {
	if err := prepareSystem(); err != nil {
		fatal("%v", err)
	}
	err := serve(context.Background())
	fatal("%v", err)
}

// prepareSystem mounts what the guest needs, moves the system off the
// initramfs and loads the image's modules. The mounts and the new root
// are the mount namespace's, so PID 1 and everything started later share
// them; only PID 1 keeps the initramfs as its root directory, which it
// never uses.
func prepareSystem() error {
	if err := earlyMounts(); err != nil {
		return fmt.Errorf("early mounts: %w", err)
	}
	onRootfs, err := rootIsInitramfs()
	if err != nil {
		return fmt.Errorf("inspect root mount: %w", err)
	}
	if onRootfs {
		// runc's pivot_root cannot leave the initramfs (rootfs can never
		// be unmounted), so move the system onto a tmpfs.
		if err := switchRoot("/newroot"); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
	}
	if err := lateMounts(); err != nil {
		return fmt.Errorf("mounts: %w", err)
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	var uts unix.Utsname
	unix.Uname(&uts)
	modDir := filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]))
	if err := kmod.LoadList(ModulesList, modDir, string(cmdline)); err != nil {
		// Keep going: the service reports what is missing when it is used.
		fmt.Fprintf(os.Stderr, "berth-agent: load modules: %v\n", err)
	}
	// After the modules: loading virtio_balloon resets the order.
	if err := reportSmallerFreeBlocks("/sys"); err != nil {
		fmt.Fprintf(os.Stderr, "berth-agent: %v\n", err)
	}
	return nil
}

// powerOff is the agent's Shutdown: the guest kernel powers the VM off.
func powerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Reboot only returns on failure.
	for {
		time.Sleep(time.Hour)
	}
}

// fatal ends the service; PID 1 sees it exit and powers the VM off.
func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "berth-agent: "+format+"\n", args...)
	os.Exit(1)
}

type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

func mountAll(ms []mountSpec) error {
	for _, m := range ms {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

const nosuidNodevNoexec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

func earlyMounts() error {
	return mountAll([]mountSpec{
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"proc", "/proc", "proc", nosuidNodevNoexec, ""},
		{"sysfs", "/sys", "sysfs", nosuidNodevNoexec, ""},
	})
}

func lateMounts() error {
	return mountAll([]mountSpec{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuidNodevNoexec, ""},
	})
}

// rootIsInitramfs reports whether / is the kernel's rootfs.
func rootIsInitramfs() (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	return parseRootFstype(f) == "rootfs", nil
}

// parseRootFstype returns the file system type mounted at / in a
// mountinfo listing (the last such line wins, as later mounts cover
// earlier ones).
func parseRootFstype(r io.Reader) string {
	fstype := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[4] != "/" {
			continue
		}
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" && i+1 < len(fields) {
				fstype = fields[i+1]
				break
			}
		}
	}
	return fstype
}

// switchRoot moves the system from the initramfs onto a tmpfs at newRoot
// and makes that the root, as busybox's switch_root does, but without
// copying anything or executing the agent again: the directories the
// image fills (the agent's, InitramfsAgentDir; /etc and /lib with the
// module list and modules) are bind-mounted read-only into the new root,
// empty directories and the mount points of the file systems mounted on
// their own (/dev, /proc, /sys are moved; /run and /tmp get a tmpfs
// later) are created empty, and this process carries on there. Under
// TCG, walking, copying and then deleting the initramfs cost ~0.1 s of
// every boot (the code runs once and is translated for it); the files
// stay where the kernel unpacked them, which is where their only copy
// was anyway.
func switchRoot(newRoot string) error {
	if err := mountAll([]mountSpec{{"tmpfs", newRoot, "tmpfs", 0, "mode=0755"}}); err != nil {
		return err
	}
	entries, err := os.ReadDir("/")
	if err != nil {
		return err
	}
	for _, e := range entries {
		src, dst := "/"+e.Name(), filepath.Join(newRoot, e.Name())
		switch {
		case src == newRoot:
		case e.Type()&fs.ModeSymlink != 0: // /init
			target, err := os.Readlink(src)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
		case e.IsDir():
			info, err := e.Info()
			if err != nil {
				return err
			}
			if err := os.Mkdir(dst, info.Mode().Perm()|info.Mode()&fs.ModeSticky); err != nil {
				return err
			}
			if ownFileSystem[src] {
				continue
			}
			if sub, err := os.ReadDir(src); err == nil && len(sub) == 0 {
				continue // an empty directory stays an empty, writable one
			}
			if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind %s: %w", src, err)
			}
			if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
				return fmt.Errorf("make %s read-only: %w", src, err)
			}
		}
		// Nothing else is at the top of Berth's initramfs (guest.Build).
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(m, filepath.Join(newRoot, m), "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", m, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move new root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}

// ownFileSystem are the initramfs directories that get a file system of
// their own: moved there (/dev, /proc, /sys) or mounted by lateMounts.
var ownFileSystem = map[string]bool{"/dev": true, "/proc": true, "/sys": true, "/run": true, "/tmp": true}
