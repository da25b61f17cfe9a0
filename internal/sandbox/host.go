package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protodelim"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/logcap"
)

// makeSharedMount turns dir into a mount point with shared propagation.
//
// Why: virtiofsd runs in its own mount namespace whose mounts are slaves of
// ours. Root file systems bind-mounted under dir after virtiofsd started
// reach it only if dir is a shared mount; a host whose / is private (no
// systemd) would otherwise hide them and the guest would see empty
// directories.
func makeSharedMount(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount shared dir %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	return nil
}

// bindRootfs bind-mounts a container's root file system (recursively, so
// mounts inside it come along) under the shared directory.
func bindRootfs(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("rootfs %s: %w", src, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("rootfs %s is not a directory", src)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount rootfs %s: %w", src, err)
	}
	return nil
}

// bindPath bind-mounts a host file or directory at dst, creating dst as
// the same kind of node.
func bindPath(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if st.IsDir() {
		err = os.MkdirAll(dst, 0o755)
	} else {
		var f *os.File
		if f, err = os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount %s: %w", src, err)
	}
	return nil
}

// unmount detaches a mount point; a path that is not mounted (or gone) is
// not an error, so teardown can run more than once.
func unmount(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s: %w", path, err)
}

// virtiofsd is the daemon serving the shared directory to the guest.
type virtiofsd struct {
	cmd      *exec.Cmd
	done     chan struct{}
	log      *logcap.File
	stopOnce sync.Once
}

// startVirtiofsd starts virtiofsd on source and waits for its socket.
// It dies with its parent (Pdeathsig) and exits on its own when QEMU
// disconnects.
// Its log is capped at logMaxBytes (hypervisor.log_max_kib): virtiofsd
// logs about requests the guest makes.
func startVirtiofsd(ctx context.Context, bin, socket, source, cache string, logMaxBytes int64) (*virtiofsd, error) {
	logPath := strings.TrimSuffix(socket, ".sock") + ".log"
	logFile, err := logcap.Create(logPath, logMaxBytes)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--socket-path="+socket, "-o", "source="+source, "-o", "cache="+cache)
	// Through a pipe that exec copies into the capped log; Wait returns
	// once the copy is done, or a second after virtiofsd exited.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.WaitDelay = time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start virtiofsd %s: %w (check hypervisor.virtiofsd_path; Debian ships it in qemu-system-common)", bin, err)
	}
	v := &virtiofsd{cmd: cmd, done: make(chan struct{}), log: logFile}
	go func() { cmd.Wait(); close(v.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			return v, nil
		}
		select {
		case <-v.done:
			v.stop()
			return nil, fmt.Errorf("virtiofsd exited at start: %s", tail(logPath, 5))
		case <-ctx.Done():
			v.stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			v.stop()
			return nil, fmt.Errorf("virtiofsd did not create %s within 10s: %s", socket, tail(logPath, 5))
		}
	}
}

// stop waits briefly for virtiofsd to exit by itself (it does once QEMU
// has gone) and kills it otherwise. Idempotent.
func (v *virtiofsd) stop() {
	if v == nil {
		return
	}
	v.stopOnce.Do(func() {
		select {
		case <-v.done:
		case <-time.After(time.Second):
			syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
			<-v.done
		}
		v.log.Close()
	})
	<-v.done
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		f.Seek(-64<<10, io.SeekEnd)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return "(empty)"
	}
	return "  " + strings.Join(lines, "\n  ")
}

func writeStreamHeader(w io.Writer, hdr *api.StreamHeader) error {
	_, err := protodelim.MarshalTo(w, hdr)
	return err
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}
