// Command boot measures how long Berth takes to run a container, next to
// the floor set by the VM itself, in one run:
//
//	raw QEMU boot to agent ready   QEMU started directly with Berth's guest
//	                               image; time until the agent answers Info
//	berth run /bin/true            the whole CLI: config, virtiofsd, QEMU,
//	                               agent, container create/start/wait,
//	                               teardown
//
// It prints the median of -n runs of each and the ratio between them.
// Usage (root, guest image built): go run ./bench/boot -n 5 -rootfs DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/containerd/ttrpc"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/transport"
)

func main() {
	n := flag.Int("n", 5, "runs of each measurement")
	rootfs := flag.String("rootfs", "bin/rootfs-busybox", "container root file system for berth run")
	berthBin := flag.String("berth", "bin/berth", "berth binary")
	stateDir := flag.String("state-dir", "/var/lib/berth", "Berth state directory (guest image)")
	flag.Parse()

	cfg, err := config.Load("", config.Overrides{StateDir: *stateDir})
	if err != nil {
		fatal(err)
	}
	accel, reason, err := qemu.CachedAccel(context.Background(), qemu.AccelProbe{
		Binary: cfg.Hypervisor.Path, Kernel: cfg.Guest.Kernel, Timeout: 5 * time.Second,
	}, filepath.Join(cfg.RunDir, "accel.json"))
	if err != nil {
		fatal(err)
	}
	fmt.Printf("accelerator: %s (%s); machine %s; %d runs each\n\n", accel, reason, cfg.Hypervisor.Machine, *n)

	var raw, run []time.Duration
	for i := 0; i < *n; i++ {
		d, err := rawBoot(cfg, accel)
		if err != nil {
			fatal(fmt.Errorf("raw boot: %w", err))
		}
		raw = append(raw, d)
		d, err = berthRun(*berthBin, *stateDir, *rootfs)
		if err != nil {
			fatal(fmt.Errorf("berth run: %w", err))
		}
		run = append(run, d)
	}
	mr, mb := median(raw), median(run)
	fmt.Printf("%-34s %10s %10s %10s\n", "measurement", "median", "min", "max")
	row := func(name string, ds []time.Duration) {
		s := sorted(ds)
		fmt.Printf("%-34s %10s %10s %10s\n", name, ms(median(ds)), ms(s[0]), ms(s[len(s)-1]))
	}
	row("raw QEMU boot to agent ready", raw)
	row("berth run /bin/true (end to end)", run)
	fmt.Printf("\noverhead ratio (berth run / raw boot): %.2fx; berth's own cost: %s\n", float64(mb)/float64(mr), ms(mb-mr))
}

// rawBoot starts QEMU with the guest image and a virtio-serial port and
// measures until the agent answers Info. No virtiofsd, no container.
func rawBoot(cfg *config.Config, accel qemu.Accel) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	m := qemu.Machine{
		Binary: cfg.Hypervisor.Path, Type: qemu.MachineType(cfg.Hypervisor.Machine), Accel: accel,
		VCPUs: cfg.Hypervisor.DefaultVCPUs, MemoryMiB: cfg.Hypervisor.DefaultMemoryMiB,
		Kernel: cfg.Guest.Kernel, Initrd: cfg.Guest.Initrd,
		KernelParams: "berth.transport=virtio-serial",
		ConsoleLog:   filepath.Join(dir, "console.log"),
		QMPSocket:    filepath.Join(dir, "qmp.sock"),
		SerialPorts:  []qemu.VirtioSerialPort{{ID: "agent", Name: transport.SerialPortName, SocketPath: filepath.Join(dir, "agent.sock")}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	vm, err := qemu.Start(ctx, m, qemu.StartOptions{DieWithParent: true})
	if err != nil {
		return 0, err
	}
	defer vm.Kill()
	d := transport.NewSerialDialer(filepath.Join(dir, "agent.sock"))
	defer d.Close()
	conn, err := d.Dial(ctx, transport.AgentPort)
	if err != nil {
		return 0, err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	if _, err := api.NewAgentClient(client).Info(ctx, &api.InfoRequest{}); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func berthRun(bin, stateDir, rootfs string) (time.Duration, error) {
	start := time.Now()
	out, err := exec.Command(bin, "--state-dir", stateDir, "run", "--rootfs", rootfs, "--", "/bin/true").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	return time.Since(start), nil
}

func sorted(ds []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func median(ds []time.Duration) time.Duration {
	s := sorted(ds)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
