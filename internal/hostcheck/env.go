package hostcheck

import (
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
)

// env is the host as the probes see it. hostEnv is the real one; tests
// supply fakes.
type env struct {
	// output runs a command and returns its combined output.
	output func(ctx context.Context, name string, args ...string) ([]byte, error)
	// stat is os.Stat.
	stat func(path string) (fs.FileInfo, error)
	// open opens a file for reading (/proc/self/mountinfo, /proc/1/comm).
	open func(path string) (io.ReadCloser, error)
	// access is access(2): may this process use path with mode (unix.R_OK, W_OK, X_OK)?
	access func(path string, mode uint32) error
	// cachedAccel is qemu.CachedAccel.
	cachedAccel func(ctx context.Context, p qemu.AccelProbe, cacheFile string) (qemu.Accel, string, error)
	// detectAccel is qemu.DetectAccel (the same probe, never cached).
	detectAccel func(ctx context.Context, p qemu.AccelProbe) (qemu.Accel, string, error)
	// guestKernel describes the built guest image's kernel.
	guestKernel func(cfg *config.Config) (GuestKernel, error)
}

// commandTimeout bounds each external command a probe runs.
const commandTimeout = 10 * time.Second

func hostEnv() env {
	return env{
		output: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(ctx, commandTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Clean(name), args...)
			cmd.Stdin = nil
			return cmd.CombinedOutput()
		},
		stat:        os.Stat,
		open:        func(p string) (io.ReadCloser, error) { return os.Open(p) },
		access:      unix.Access,
		cachedAccel: qemu.CachedAccel,
		detectAccel: qemu.DetectAccel,
		guestKernel: guestKernel,
	}
}
