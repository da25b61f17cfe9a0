package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/vmm"
)

// Elastic memory rows: how long a container that allocates past the
// guest's memory waits for the host to grow the VM, and what a workload
// that grows in chunks costs under Berth next to runc.

// chunkScript holds 1 GiB in 64 MiB chunks: one 64 MiB shell variable,
// copied into fifteen more (each copy is a fresh allocation that the shell
// touches). busybox has no stress tool; this needs only sh, head and tr.
func chunkScript() string {
	var b strings.Builder
	b.WriteString(`c=$(head -c 67108864 /dev/zero | tr "\0" a)`)
	for i := 1; i < 16; i++ {
		fmt.Fprintf(&b, "; v%d=$c", i)
	}
	b.WriteString("; echo held")
	return b.String()
}

// elasticSandbox boots a sandbox with elastic memory and the given step
// (stepMiB 0: elastic off, booted with bootMiB).
func elasticSandbox(ctx context.Context, stateDir string, stepMiB int, id string, bootMiB ...int) (*sandbox.Sandbox, func(), error) {
	cfg, err := config.Load("", config.Overrides{StateDir: stateDir})
	if err != nil {
		return nil, nil, err
	}
	cfg.Memory.Elastic, cfg.Memory.StepMiB = stepMiB > 0, max(stepMiB, 2)
	cfg.RunDir, _ = os.MkdirTemp("", "berth-bench-elastic-")
	// QEMU runs as an unprivileged uid and must reach run_dir.
	os.Chmod(cfg.RunDir, 0o711)
	opts := sandbox.Options{ID: id, Driver: qemu.Driver{}, Accel: vmm.TCG}
	if len(bootMiB) > 0 {
		opts.MemoryMiB = bootMiB[0]
	}
	sb, err := sandbox.Create(ctx, cfg, opts)
	if err != nil {
		os.RemoveAll(cfg.RunDir)
		return nil, nil, err
	}
	return sb, func() { sb.Destroy(context.Background()); os.RemoveAll(cfg.RunDir) }, nil
}

// runIn runs args in a container of sb and returns once it has started;
// wait waits for its exit.
func runIn(ctx context.Context, sb *sandbox.Sandbox, rootfs string, args ...string) (wait func() error, err error) {
	spec := oci.DefaultSpec(rootfs, oci.ProcessOptions{Args: args})
	proc, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "main", Spec: spec, RootfsDir: rootfs})
	if err != nil {
		return nil, err
	}
	if err := proc.Start(ctx); err != nil {
		return nil, err
	}
	return func() error {
		st, err := proc.Wait(ctx)
		if err == nil && st.Code != 0 {
			err = fmt.Errorf("%v exited %d", args, st.Code)
		}
		sb.DeleteContainer(ctx, "main")
		return err
	}, nil
}

// growLatency starts a container that allocates one step past what the
// guest has and times it from the start of the allocating process until
// the VM has grown by the step and the guest uses it (ResizeMemory returns
// only then, and MemoryStatus waits for a resize under way).
func growLatency(ctx context.Context, stateDir, rootfs string, stepMiB int) (total, afterDecision time.Duration, err error) {
	sb, done, err := elasticSandbox(ctx, stateDir, stepMiB, "bench-elastic-"+strconv.Itoa(stepMiB))
	if err != nil {
		return 0, 0, err
	}
	defer done()
	boot := sb.MemoryStatus(ctx).GuestAtBootMiB
	t0 := time.Now()
	wait, err := runIn(ctx, sb, rootfs, "dd", "if=/dev/zero", "of=/dev/null", "bs="+strconv.Itoa(stepMiB)+"M", "count=1")
	if err != nil {
		return 0, 0, err
	}
	var d time.Duration
	var usable time.Time
	for {
		if sb.MemoryStatus(ctx).GuestCurrentMiB >= boot+stepMiB {
			usable = time.Now()
			d = usable.Sub(t0)
			break
		}
		if time.Since(t0) > 5*time.Minute {
			return 0, 0, fmt.Errorf("+%d MiB: the VM did not grow within 5 minutes", stepMiB)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The grow is booked once ResizeMemory has returned; its event
	// carries the time of the decision (the guest's pressure sample).
	var decided time.Duration
	for i := 0; i < 500; i++ {
		if g := sb.ElasticStatus().LastGrow; g != nil {
			decided = usable.Sub(g.At)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return d, decided, wait()
}

// chunksBerth times chunkScript in a fresh elastic sandbox (from the
// container's start until its exit); with fixed, in a 2 GiB VM without
// elastic memory, which is TCG's share of the time.
func chunksBerth(ctx context.Context, stateDir, rootfs string, fixed bool) (time.Duration, error) {
	step, boot := config.DefaultElasticStepMiB, []int(nil)
	if fixed {
		step, boot = 0, []int{2048}
	}
	sb, done, err := elasticSandbox(ctx, stateDir, step, "bench-elastic-chunks", boot...)
	if err != nil {
		return 0, err
	}
	defer done()
	t0 := time.Now()
	wait, err := runIn(ctx, sb, rootfs, "sh", "-c", chunkScript())
	if err != nil {
		return 0, err
	}
	err = wait()
	return time.Since(t0), err
}

// chunksRunc times chunkScript with `runc run` over the same rootfs.
func chunksRunc(ctx context.Context, runc, rootfs string) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "berth-bench-runc-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	bundle, root := filepath.Join(dir, "bundle"), filepath.Join(dir, "state")
	os.MkdirAll(bundle, 0o755)
	if out, err := exec.CommandContext(ctx, runc, "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("runc spec: %v: %s", err, out)
	}
	p := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return 0, err
	}
	spec.Process.Terminal = false
	spec.Process.Args = []string{"sh", "-c", chunkScript()}
	spec.Root = &specs.Root{Path: rootfs, Readonly: true}
	if b, err = json.Marshal(&spec); err != nil {
		return 0, err
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return 0, err
	}
	id := "berth-bench-chunks-" + strconv.Itoa(os.Getpid())
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, runc, "--root", root, "run", "--bundle", bundle, id).CombinedOutput()
	d := time.Since(t0)
	if err != nil {
		exec.Command(runc, "--root", root, "delete", "--force", id).Run()
		return 0, fmt.Errorf("runc run: %v: %s", err, out)
	}
	return d, nil
}
