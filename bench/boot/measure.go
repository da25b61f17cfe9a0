package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/vmm"
)

// runLimit bounds any one measured run; a TCG boot takes seconds, so
// reaching this means something hangs, not that the host is slow.
const runLimit = 2 * time.Minute

// seq numbers the sandboxes and containers this process creates.
var seq int

// uniqueID names a sandbox or runc container; the pid keeps two
// benchmarks on one host apart.
func uniqueID(prefix string) string {
	seq++
	return prefix + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(seq)
}

// phases are the parts of one berth run, timed separately.
type phases struct {
	sandbox   time.Duration // sandbox.Create: virtiofsd, QEMU, agent ready
	create    time.Duration // CreateContainer: bind mount, runc init in the guest
	startWait time.Duration // Start and Wait: exec /bin/true, exit status
	teardown  time.Duration // ReleaseContainer and Destroy
}

// berthPhases does what berth run does, with the sandbox package in this
// process, and times each step. The difference between their sum and the
// end-to-end berth run is the CLI's own cost (process start, config,
// stale-sandbox scan).
func berthPhases(ctx context.Context, cfg *config.Config, accel qemu.Accel, rootfs string) (ph phases, retErr error) {
	ctx, cancel := context.WithTimeout(ctx, runLimit)
	defer cancel()
	id := uniqueID("bench")
	t0 := time.Now()
	sb, err := sandbox.Create(ctx, cfg, sandbox.Options{ID: id, Driver: qemu.Driver{}, Accel: vmm.Accel(accel)})
	if err != nil {
		return ph, err
	}
	t1 := time.Now()
	ph.sandbox = t1.Sub(t0)
	// On any error below, still tear down: an abandoned sandbox holds the
	// rootfs bind-mounted under run_dir.
	destroyed := false
	defer func() {
		if !destroyed {
			sb.Destroy(context.Background())
		}
	}()

	spec := oci.DefaultSpec(rootfs, oci.ProcessOptions{Args: []string{"/bin/true"}})
	proc, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "main", Spec: spec, RootfsDir: rootfs})
	if err != nil {
		return ph, err
	}
	t2 := time.Now()
	ph.create = t2.Sub(t1)
	if err := proc.Start(ctx); err != nil {
		return ph, err
	}
	st, err := proc.Wait(ctx)
	if err != nil {
		return ph, err
	}
	if st.Code != 0 {
		return ph, fmt.Errorf("/bin/true exited %d", st.Code)
	}
	t3 := time.Now()
	ph.startWait = t3.Sub(t2)

	err = sb.ReleaseContainer(ctx, "main") // as berth run does before Destroy
	destroyed = true
	if derr := sb.Destroy(context.Background()); err == nil {
		err = derr
	}
	ph.teardown = time.Since(t3)
	return ph, err
}

// berthRun times the CLI end to end with the benchmark's configuration.
func berthRun(ctx context.Context, bin, cfgPath, rootfs string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, runLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config", cfgPath, "run", "--rootfs", rootfs, "--", "/bin/true")
	// On interrupt or timeout, SIGTERM lets berth run tear its sandbox
	// down (SIGKILL would leave it for CleanupStale); WaitDelay bounds
	// how long that may take before Go kills it anyway. Pdeathsig does the
	// same should the benchmark itself die: berth run would otherwise keep
	// its VM running with nobody waiting for it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	return d, nil
}

// runcBench runs /bin/true with runc in a bundle over the same rootfs: the
// cost of a container with no VM, for scale.
type runcBench struct {
	bin, bundle, root string
}

// newRuncBench makes a bundle whose config.json is `runc spec`'s default
// with the process changed to a non-terminal /bin/true and the root set
// to rootfs (read-only, as runc spec has it: the benchmark must not
// change the user's rootfs).
func newRuncBench(ctx context.Context, bin, rootfs, dir string) (*runcBench, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, err
	}
	r := &runcBench{bin: path, bundle: filepath.Join(dir, "bundle"), root: filepath.Join(dir, "state")}
	if err := os.MkdirAll(r.bundle, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, r.bin, "spec", "--bundle", r.bundle).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("runc spec: %v: %s", err, out)
	}
	cfgPath := filepath.Join(r.bundle, "config.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("runc spec output: %w", err)
	}
	spec.Process.Terminal = false
	spec.Process.Args = []string{"/bin/true"}
	spec.Root = &specs.Root{Path: rootfs, Readonly: true}
	if b, err = json.MarshalIndent(&spec, "", "\t"); err != nil {
		return nil, err
	}
	return r, os.WriteFile(cfgPath, b, 0o644)
}

// run times one `runc run`, which creates, starts, waits for and deletes
// the container.
func (r *runcBench) run(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, runLimit)
	defer cancel()
	id := uniqueID("berth-bench")
	start := time.Now()
	out, err := exec.CommandContext(ctx, r.bin, "--root", r.root, "run", "--bundle", r.bundle, id).CombinedOutput()
	d := time.Since(start)
	if err != nil {
		// A killed runc leaves its state behind; this removes it and
		// the container's cgroup.
		exec.Command(r.bin, "--root", r.root, "delete", "--force", id).Run()
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	return d, nil
}
