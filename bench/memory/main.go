// Command memory measures memory hot-plug, in one run: the time from a
// resize request until the guest can use +1 GiB, and until 1 GiB is gone
// again, for virtio-mem and for ACPI DIMMs, next to the raw floor: a bare
// QMP qom-set of virtio-mem's requested-size until the guest's MemTotal
// has grown by the GiB (no validation, no stepping, no status checks).
//
// Elastic memory: the time from the start of a container that allocates
// past its guest's memory until the VM has grown by one step (256 MiB and
// 1 GiB steps) and the guest uses it; and the wall time of a container
// that holds 1 GiB in 64 MiB chunks, under Berth (elastic) and under runc.
//
// Usage (root, guest image built, `make rootfs`):
//
//	go run ./bench/memory -n 5 -rootfs bin/rootfs-busybox
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/containerd/ttrpc"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/bench/internal/benchtab"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/transport"
	"github.com/berth-runtime/berth/internal/vmm"
)

func main() {
	n := flag.Int("n", 5, "repetitions of each measurement")
	stateDir := flag.String("state-dir", "/var/lib/berth", "Berth state directory (guest image)")
	rootfsFlag := flag.String("rootfs", "bin/rootfs-busybox", "busybox root file system for the elastic rows (make rootfs)")
	runc := flag.String("runc", "runc", `runc binary for the no-VM row; "" skips it`)
	elasticN := flag.Int("elastic-n", 3, "repetitions of each elastic measurement (each boots a VM)")
	elasticOnly := flag.Bool("elastic-only", false, "measure only the elastic rows")
	flag.Parse()
	ctx := context.Background()
	rootfs, err := filepath.Abs(*rootfsFlag)
	if err != nil {
		fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "bin", "busybox")); err != nil {
		fatal(fmt.Errorf("-rootfs %s: no busybox in it (make rootfs builds one)", *rootfsFlag))
	}

	rows := map[string][]time.Duration{}
	mechs := []string{config.MemoryHotplugVirtioMem, config.MemoryHotplugDIMM}
	if *elasticOnly {
		mechs = nil
	}
	for _, mech := range mechs {
		cfg, err := config.Load("", config.Overrides{StateDir: *stateDir})
		if err != nil {
			fatal(err)
		}
		cfg.Hypervisor.MemoryHotplug = mech
		// Resizes by hand only: elastic memory would give the GiB back.
		cfg.Memory.Elastic = false
		cfg.RunDir, _ = os.MkdirTemp("", "berth-bench-mem-")
		// QEMU runs as an unprivileged uid and must reach run_dir.
		os.Chmod(cfg.RunDir, 0o711)
		defer os.RemoveAll(cfg.RunDir)
		sb, err := sandbox.Create(ctx, cfg, sandbox.Options{ID: "bench-" + mech, Driver: qemu.Driver{}, Accel: vmm.TCG})
		if err != nil {
			fatal(err)
		}
		boot := sb.MemoryStatus(ctx).GuestAtBootMiB
		for i := 0; i < *n; i++ {
			t0 := time.Now()
			if _, err := sb.ResizeMemory(ctx, boot+1024); err != nil {
				sb.Destroy(ctx)
				fatal(fmt.Errorf("%s grow: %w", mech, err))
			}
			rows[mech+" +1 GiB (until usable)"] = append(rows[mech+" +1 GiB (until usable)"], time.Since(t0))
			t0 = time.Now()
			if _, err := sb.ResizeMemory(ctx, boot); err != nil {
				sb.Destroy(ctx)
				fatal(fmt.Errorf("%s shrink: %w", mech, err))
			}
			rows[mech+" -1 GiB (until removed)"] = append(rows[mech+" -1 GiB (until removed)"], time.Since(t0))
		}
		sb.Destroy(ctx)
	}
	if !*elasticOnly {
		raw, err := rawFloor(ctx, *stateDir, *n)
		if err != nil {
			fatal(err)
		}
		rows["raw floor: qom-set until MemTotal +1 GiB"] = raw
	}

	for i := 0; i < *elasticN; i++ {
		for _, step := range []int{256, 1024} {
			d, dd, err := growLatency(ctx, *stateDir, rootfs, step)
			if err != nil {
				fatal(fmt.Errorf("elastic +%d MiB: %w", step, err))
			}
			name := fmt.Sprintf("elastic step %4d MiB: allocation until usable", step)
			rows[name] = append(rows[name], d)
			name = fmt.Sprintf("elastic step %4d MiB: decision until usable", step)
			rows[name] = append(rows[name], dd)
		}
		for _, fixed := range []bool{false, true} {
			d, err := chunksBerth(ctx, *stateDir, rootfs, fixed)
			if err != nil {
				fatal(fmt.Errorf("1 GiB in chunks (fixed VM %v): %w", fixed, err))
			}
			name := "hold 1 GiB in 64 MiB chunks: berth (elastic, 256 MiB boot)"
			if fixed {
				name = "hold 1 GiB in 64 MiB chunks: berth (2 GiB VM, no elastic)"
			}
			rows[name] = append(rows[name], d)
		}
		if *runc != "" {
			d, err := chunksRunc(ctx, *runc, rootfs)
			if err != nil {
				fatal(fmt.Errorf("runc 1 GiB in chunks: %w (pass -runc '' to skip it)", err))
			}
			rows["hold 1 GiB in 64 MiB chunks: runc (no VM)"] = append(rows["hold 1 GiB in 64 MiB chunks: runc (no VM)"], d)
		}
	}

	fmt.Printf("memory hot-plug, TCG, 256 MiB guest, %d runs each (elastic rows: %d, a fresh VM each)\n\n", *n, *elasticN)
	names := make([]string, 0, len(rows))
	for k := range rows {
		names = append(names, k)
	}
	sort.Strings(names)
	var series []benchtab.Series
	for _, k := range names {
		series = append(series, benchtab.Series{Name: k, Runs: rows[k]})
	}
	benchtab.Print(os.Stdout, series)
}

// rawFloor boots the guest image with a virtio-mem device but no Berth
// sandbox around it, sets requested-size over QMP and polls the agent's
// MemTotal until it has grown by the GiB.
func rawFloor(ctx context.Context, stateDir string, n int) ([]time.Duration, error) {
	cfg, err := config.Load("", config.Overrides{StateDir: stateDir})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "berth-bench-raw-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	m := qemu.Machine{
		Binary: cfg.Hypervisor.Path, Type: qemu.Q35, Accel: qemu.TCG, VCPUs: 1, MemoryMiB: 256,
		Kernel: cfg.Guest.Kernel, Initrd: cfg.Guest.Initrd, KernelParams: "berth.transport=virtio-serial swiotlb=4096",
		QMPSocket:    filepath.Join(dir, "qmp.sock"),
		SerialPorts:  []qemu.VirtioSerialPort{{ID: "agent", Name: transport.SerialPortName, SocketPath: filepath.Join(dir, "agent.sock")}},
		MaxMemoryMiB: 256 + 2048,
		VirtioMem:    &qemu.VirtioMemDevice{ID: "vm0", RegionMiB: 2048, BlockMiB: 2},
	}
	vm, err := qemu.Start(ctx, m, qemu.StartOptions{DieWithParent: true})
	if err != nil {
		return nil, err
	}
	defer vm.Kill()
	d := transport.NewSerialDialer(filepath.Join(dir, "agent.sock"))
	defer d.Close()
	conn, err := d.Dial(ctx, transport.AgentPort)
	if err != nil {
		return nil, err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	agent := api.NewAgentClient(client)
	memTotal := func() uint64 {
		info, err := agent.Info(ctx, &api.InfoRequest{})
		if err != nil {
			fatal(err)
		}
		return info.MemTotalBytes
	}
	var out []time.Duration
	for i := 0; i < n; i++ {
		before := memTotal()
		t0 := time.Now()
		if err := vm.SetVirtioMemRequested(ctx, "vm0", 1024); err != nil {
			return nil, err
		}
		// The floor for the same outcome: the guest uses the whole GiB
		// (the agent onlines blocks as they arrive).
		for memTotal() < before+1000<<20 {
		}
		out = append(out, time.Since(t0))
		if _, err := vm.ResizeVirtioMem(ctx, "vm0", 0, 10*time.Second); err != nil {
			return nil, err
		}
		for memTotal() != before {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return out, nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
