package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/docker/go-units"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/vmm/drivers"
)

// berth run's own exit codes, as Docker, Podman and a shell have them:
// exitVMFailure when the sandbox itself failed (the VM died, the agent did
// not answer), as opposed to the program's own exit code; exitNotFound and
// exitCannotExec when the program does not exist or cannot be executed in
// the container (the guest classifies those as NotFound and
// PermissionDenied).
const (
	exitVMFailure  = 125
	exitCannotExec = 126
	exitNotFound   = 127
)

type runFlags struct {
	memory  string
	cpus    int
	tty     bool
	rootfs  string
	env     []string
	workdir string
	name    string
	devices []string
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run --rootfs DIR [flags] -- CMD [ARGS...]",
		Short: "Run a command in a container inside a new VM",
		Long: `Boot a sandbox VM, run CMD in a container whose root file system is DIR,
relay stdin, stdout and stderr, and exit with CMD's exit code (128+signal when
a signal killed it; 127 when CMD does not exist in the container, 126 when it
cannot be executed, 125 when Berth or the VM failed). SIGINT, SIGTERM and SIGHUP
are forwarded to CMD; a second one kills it. The VM and everything it used on
the host are removed when CMD ends.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runRun(cmd.Context(), f, args) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.memory, "memory", "", "VM memory, e.g. 512M or 1G (default: hypervisor.default_memory)")
	fl.IntVar(&f.cpus, "cpus", 0, "number of vCPUs (default: hypervisor.default_vcpus)")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give CMD a terminal")
	fl.StringVar(&f.rootfs, "rootfs", "", "host directory holding the container's root file system (required)")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable (KEY=VALUE), repeatable")
	fl.StringVarP(&f.workdir, "workdir", "w", "/", "working directory inside the container")
	fl.StringArrayVar(&f.devices, "device", nil, "give the container a host device, HOST[:CONTAINER[:PERMS]] (a block device is hot-plugged into the VM; /dev/vfio/<group> is passed through), repeatable")
	fl.StringVar(&f.name, "name", "", "sandbox name for `berth status` and `berth resize` (default: run-<random>)")
	cmd.MarkFlagRequired("rootfs")
	return cmd
}

// parseMemoryMiB turns a --memory value into MiB, with errors that name
// the flag.
func parseMemoryMiB(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	b, err := units.RAMInBytes(v)
	if err != nil {
		return 0, fmt.Errorf("--memory %q: %v (use a size like 512M or 2G)", v, err)
	}
	mib := b >> 20
	if b%(2<<20) != 0 || mib < 128 {
		return 0, fmt.Errorf("--memory %q: must be at least 128M and a multiple of 2M", v)
	}
	return int(mib), nil
}

func runRun(ctx context.Context, f runFlags, args []string) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	memMiB, err := parseMemoryMiB(f.memory)
	if err != nil {
		return err
	}
	if f.cpus < 0 || f.cpus > 255 {
		return fmt.Errorf("--cpus %d: use a number from 1 to 255", f.cpus)
	}
	rootfs, err := filepath.Abs(f.rootfs)
	if err != nil {
		return err
	}
	if st, err := os.Stat(rootfs); err != nil || !st.IsDir() {
		return fmt.Errorf("--rootfs %s: not a directory (give the path of an unpacked container root file system)", f.rootfs)
	}
	for _, p := range []string{cfg.Guest.Kernel, cfg.Guest.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("guest image %s not found: run `berth guest build` (or set guest.kernel / guest.initrd)", p)
		}
	}
	if n := sandbox.CleanupStale(cfg.RunDir); n > 0 {
		logrus.Infof("removed %d stale sandbox(es) left by killed berth processes", n)
	}
	driver, err := drivers.For(cfg)
	if err != nil {
		return err
	}
	accel, err := sandbox.ResolveAccel(ctx, cfg, driver)
	if err != nil {
		return err
	}

	// Signals: during boot they cancel the boot (and Create cleans up);
	// once the program runs they are forwarded to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	bootCtx, cancelBoot := context.WithCancel(ctx)
	defer cancelBoot()
	booted := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			cancelBoot()
		case <-booted:
		}
	}()

	spec := oci.DefaultSpec(rootfs, oci.ProcessOptions{Args: args, Env: f.env, Cwd: f.workdir, Terminal: f.tty})
	for _, d := range f.devices {
		if err := addDevice(spec, d); err != nil {
			return err
		}
	}
	cold, err := sandbox.ColdPlugVFIO(cfg, spec)
	if err != nil {
		return err
	}

	id := f.name
	if id == "" {
		id = "run-" + randomHex(6)
	}
	sb, err := sandbox.Create(bootCtx, cfg, sandbox.Options{ID: id, Driver: driver, VCPUs: f.cpus, MemoryMiB: memMiB, Accel: accel, ColdPlugVFIO: cold})
	close(booted)
	if err != nil {
		return vmFailure(err)
	}
	defer sb.Destroy(context.Background())

	stdio := sandbox.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Terminal: f.tty}
	var con console.Console
	if f.tty {
		if con, err = console.ConsoleFromFile(os.Stdin); err != nil {
			return fmt.Errorf("--tty needs a terminal on stdin: %w", err)
		}
		if err := con.SetRaw(); err != nil {
			return fmt.Errorf("set terminal to raw mode: %w", err)
		}
		defer con.Reset()
		// containerd/console's raw mode keeps output processing (OPOST)
		// on, so the host would turn the guest's already translated
		// "\r\n" into "\r\r\n" and break programs that move the cursor
		// with a bare "\n". The guest's pty does the translation.
		if err := disableOutputProcessing(int(os.Stdout.Fd())); err != nil {
			logrus.WithError(err).Debug("clear OPOST on the terminal")
		}
	}
	proc, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "main", Spec: spec, RootfsDir: rootfs, IO: stdio})
	if err != nil {
		return startFailure(err)
	}
	if con != nil {
		resizeFromConsole(ctx, con, proc)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				resizeFromConsole(ctx, con, proc)
			}
		}()
	}
	if err := proc.Start(ctx); err != nil {
		sb.DeleteContainer(ctx, "main")
		return startFailure(err)
	}
	go forwardSignals(ctx, sigs, proc)
	status, err := proc.Wait(ctx)
	if con != nil {
		con.Reset()
	}
	if err != nil {
		return vmFailure(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Destroy follows: only the host's side of the container needs
	// undoing, the agent's Shutdown kills what is left in the guest.
	if err := sb.ReleaseContainer(dctx, "main"); err != nil {
		logrus.WithError(err).Warn("release container")
	}
	if err := sb.Destroy(dctx); err != nil {
		fmt.Fprintln(os.Stderr, "berth: cleanup:", err)
	}
	if status.Code != 0 {
		return exitError{code: int(status.Code)}
	}
	return nil
}

// addDevice parses a --device value, HOST[:CONTAINER[:PERMS]] as in
// Docker, and adds the host node's numbers to spec.
func addDevice(spec *specs.Spec, v string) error {
	parts := strings.Split(v, ":")
	host, ctrPath, perms := parts[0], parts[0], "rwm"
	if len(parts) > 1 && parts[1] != "" {
		ctrPath = parts[1]
	}
	if len(parts) > 2 {
		perms = parts[2]
	}
	if len(parts) > 3 || !filepath.IsAbs(host) || !filepath.IsAbs(ctrPath) || perms == "" || strings.Trim(perms, "rwm") != "" {
		return fmt.Errorf("--device %q: use HOST[:CONTAINER[:PERMS]] with absolute paths and PERMS from r, w, m", v)
	}
	var st unix.Stat_t
	if err := unix.Stat(host, &st); err != nil {
		return fmt.Errorf("--device %s: %w", host, err)
	}
	typ := map[uint32]string{unix.S_IFBLK: "b", unix.S_IFCHR: "c"}[st.Mode&unix.S_IFMT]
	if typ == "" {
		return fmt.Errorf("--device %s: not a device node", host)
	}
	mode := os.FileMode(st.Mode & 0o777)
	oci.AddDevice(spec, specs.LinuxDevice{Path: ctrPath, Type: typ, Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev)), FileMode: &mode}, perms)
	return nil
}

// forwardSignals relays signals to the container's init. A container's
// init ignores signals it has no handler for (it is PID 1 of its PID
// namespace), so `berth run -- sleep 100` would not stop on Ctrl-C; the
// second signal therefore escalates to SIGKILL, as a user pressing Ctrl-C
// twice means it.
func forwardSignals(ctx context.Context, sigs <-chan os.Signal, proc *sandbox.Process) {
	received := 0
	for sig := range sigs {
		received++
		s := sig.(syscall.Signal)
		if received > 1 {
			fmt.Fprintln(os.Stderr, "berth: second signal, killing the container (SIGKILL)")
			s = syscall.SIGKILL
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := proc.Signal(sctx, s); err != nil {
			logrus.WithError(err).Warn("forward signal")
		}
		cancel()
	}
}

func disableOutputProcessing(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Oflag &^= unix.OPOST
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

func resizeFromConsole(ctx context.Context, con console.Console, proc *sandbox.Process) {
	if ws, err := con.Size(); err == nil {
		proc.Resize(ctx, uint32(ws.Width), uint32(ws.Height))
	}
}

// startFailure prints why the program did not start and exits 127 (not
// found), 126 (not executable) or, for anything else, 125.
func startFailure(err error) error {
	code := exitVMFailure
	switch {
	case errdefs.IsNotFound(err):
		code = exitNotFound
	case errdefs.IsPermissionDenied(err):
		code = exitCannotExec
	}
	fmt.Fprintln(os.Stderr, "berth:", err)
	return exitError{code: code}
}

// vmFailure prints err and exits with exitVMFailure.
func vmFailure(err error) error {
	fmt.Fprintln(os.Stderr, "berth:", err)
	return exitError{code: exitVMFailure}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
