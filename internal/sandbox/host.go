package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protodelim"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/logcap"
)

// unmount detaches a mount point; a path that is not mounted (or gone) is
// not an error, so teardown can run more than once.
func unmount(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s: %w", path, err)
}

// virtiofsd is the daemon serving the shared directory to the guest.
type virtiofsd struct {
	cmd  *exec.Cmd
	done chan struct{}
	// waitErr is how it ended; set before done is closed.
	waitErr  error
	log      *logcap.File
	stopOnce sync.Once
}

// startVirtiofsd starts virtiofsd on source and waits for its socket.
// It dies with its parent (Pdeathsig) and exits on its own when QEMU
// disconnects.
// Its log is capped at logMaxBytes (hypervisor.log_max_kib): virtiofsd
// logs about requests the guest makes.
func startVirtiofsd(ctx context.Context, bin, socket, source, cache string, xattr bool, logMaxBytes int64) (*virtiofsd, error) {
	logPath := strings.TrimSuffix(socket, ".sock") + ".log"
	logFile, err := logcap.Create(logPath, logMaxBytes)
	if err != nil {
		return nil, err
	}
	// modcaps=-mknod: the guest cannot create device nodes on the host
	// (in a hostPath volume, say) through virtiofsd. FIFOs and sockets
	// need no capability and still work.
	args := append([]string{"--socket-path=" + socket, "-o", "source=" + source, "-o", "cache=" + cache, "-o", "modcaps=-mknod"}, virtiofsdFeatureArgs(bin, xattr)...)
	cmd := exec.Command(bin, args...)
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
	go func() { v.waitErr = cmd.Wait(); close(v.done) }()
	// The socket appears ~2 ms after the start (measured): polled every
	// millisecond, not every 10 as before, which added 8-10 ms to each
	// sandbox start, all on its critical path.
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
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
		case <-poll.C:
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
