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
// copying the agent or executing it again: the agent's directory
// (InitramfsAgentDir) is bind-mounted, read-only, into the new root, and
// this process carries on there. Under TCG, copying the 11 MB binary and
// starting the Go runtime once more cost ~0.4 s of every boot; the
// binary's pages stay where the kernel unpacked them either way (the
// running agent maps them), so nothing is held twice. The rest of the
// initramfs (the module list, Debian's modules) is small; it is copied and
// its initramfs copy freed.
func switchRoot(newRoot string) error {
	if err := mountAll([]mountSpec{{"tmpfs", newRoot, "tmpfs", 0, "mode=0755"}}); err != nil {
		return err
	}
	skip := map[string]bool{"/proc": true, "/sys": true, "/dev": true, InitramfsAgentDir: true, newRoot: true}
	err := filepath.WalkDir("/", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skip[path] {
			os.MkdirAll(filepath.Join(newRoot, path), 0o755)
			return fs.SkipDir
		}
		if path == "/" {
			return nil
		}
		return copyEntry(path, filepath.Join(newRoot, path), d)
	})
	if err != nil {
		return fmt.Errorf("copy initramfs: %w", err)
	}
	agentDir := filepath.Join(newRoot, InitramfsAgentDir)
	if err := unix.Mount(InitramfsAgentDir, agentDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", InitramfsAgentDir, err)
	}
	if err := unix.Mount("", agentDir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", InitramfsAgentDir, err)
	}
	// Free the copied part of the initramfs: its pages are not
	// reclaimable otherwise.
	entries, _ := os.ReadDir("/")
	for _, e := range entries {
		if p := "/" + e.Name(); !skip[p] {
			os.RemoveAll(p)
		}
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

func copyEntry(src, dst string, d fs.DirEntry) error {
	info, err := d.Info()
	if err != nil {
		return err
	}
	switch {
	case d.IsDir():
		return os.MkdirAll(dst, info.Mode().Perm())
	case info.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	case info.Mode().IsRegular():
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, info.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	default:
		// Device nodes and sockets come from devtmpfs; nothing else in
		// the initramfs needs copying.
		return nil
	}
}
