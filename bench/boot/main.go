// Command boot measures how long Berth takes to run a container, next to
// the floor set by the VM itself and, when runc is installed, a plain
// container without a VM:
//
//	runc run /bin/true             the same rootfs, no VM (baseline)
//	raw QEMU boot to agent ready   QEMU started directly with Berth's guest
//	                               image; time until the agent answers Info
//	  sandbox create               sandbox.Create: virtiofsd, QEMU, agent
//	  container create             CreateContainer: rootfs bind mount,
//	                               libcontainer's init in the guest
//	  container start + wait       Start, Wait: /bin/true runs and exits
//	  teardown                     ReleaseContainer, Destroy
//	berth run /bin/true            the whole CLI, end to end
//
// The indented rows are the phases of berth run, measured in this process
// with the same sandbox package the CLI calls, to show where its time
// goes; what berth run takes beyond their sum is the CLI's own cost. Each
// row is the median (min, max) of -n runs. The measurements take turns,
// after one untimed warm-up round, so that none of them alone pays for a
// cold page cache or runs while the host reclaims the previous VM. A
// round during which a VM that is not the benchmark's own ran is repeated
// (-quiet, the default), and the output says how many were.
//
// Everything runs against a private run_dir in a temporary configuration
// (the -config file, or the defaults, with -machine applied), so the
// benchmark neither sees nor cleans up other sandboxes on the host.
//
// Usage (root, guest image built):
//
//	go run ./bench/boot -n 5 -berth bin/berth -state-dir /var/lib/berth -rootfs bin/rootfs-busybox [-machine microvm]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/berth-runtime/berth/bench/internal/benchtab"
	"github.com/berth-runtime/berth/bench/internal/floor"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/guest"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
)

type options struct {
	n        int
	rootfs   string
	berth    string
	stateDir string
	config   string
	machine  string
	runc     string
	quiet    bool
	// compareStateDir holds a second guest image (another kernel), and
	// compareConfig is a second base configuration (e.g. other hypervisor
	// settings): with either, a second raw boot and berth run are
	// measured in the same rounds, so that both see the same host.
	compareStateDir string
	compareConfig   string
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 5, "timed runs of each measurement")
	flag.StringVar(&o.rootfs, "rootfs", "bin/rootfs-busybox", "container root file system (must hold /bin/true)")
	flag.StringVar(&o.berth, "berth", "bin/berth", "berth binary")
	flag.StringVar(&o.stateDir, "state-dir", "", "Berth state directory holding the guest image (default: state_dir of the configuration)")
	flag.StringVar(&o.config, "config", "", "base configuration file (default: "+config.DefaultPath+" if it exists, else the built-in defaults)")
	flag.StringVar(&o.machine, "machine", "", "QEMU machine type, q35 or microvm (default: hypervisor.machine of the configuration)")
	flag.StringVar(&o.runc, "runc", "runc", `runc binary for the no-VM baseline row; "" skips it`)
	flag.StringVar(&o.compareStateDir, "compare-state-dir", "", "a second state directory (e.g. one whose guest image has the other guest.kernel_source): its raw boot and berth run are measured in the same rounds")
	flag.StringVar(&o.compareConfig, "compare-config", "", "a second base configuration file (e.g. other [hypervisor] settings): its raw boot and berth run are measured in the same rounds (with -compare-state-dir's image if given, else -state-dir's)")
	flag.BoolVar(&o.quiet, "quiet", true, "repeat rounds during which another VM ran on the host (at most 3n rounds in all)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// series is one row of the table: a name and its timings.
type series struct {
	name, short string // short names it in the per-run progress lines
	ds          []time.Duration
}

func (s *series) add(d time.Duration) { s.ds = append(s.ds, d) }

// wrap names the step that failed.
func wrap(step string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", step, err)
	}
	return nil
}

func run(ctx context.Context, o options) (retErr error) {
	if o.n < 1 {
		return fmt.Errorf("-n %d: need at least one run", o.n)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: berth run mounts and starts QEMU and virtiofsd")
	}
	switch o.machine {
	case "", config.MachineQ35, config.MachineMicroVM:
	default:
		return fmt.Errorf("-machine %q: use %s or %s", o.machine, config.MachineQ35, config.MachineMicroVM)
	}
	// The sandbox package's debug and info lines would break up the
	// table; its warnings still show.
	logrus.SetLevel(logrus.WarnLevel)

	rootfs, err := filepath.Abs(o.rootfs)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(rootfs, "bin", "true")); err != nil {
		return fmt.Errorf("-rootfs %s: no /bin/true in it (make rootfs builds one)", o.rootfs)
	}
	berthBin, err := exec.LookPath(o.berth)
	if err != nil {
		return fmt.Errorf("-berth: %w (make build)", err)
	}

	tmp, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return err
	}
	// QEMU runs as an unprivileged uid and must reach run_dir below it.
	os.Chmod(tmp, 0o711)
	defer func() {
		if err := removeTemp(tmp); err != nil && retErr == nil {
			retErr = err
		}
	}()
	cfg, cfgPath, err := benchConfig(o, o.stateDir, tmp, "")
	if err != nil {
		return err
	}
	// The image measured is this build's (a -compare-state-dir image is
	// another on purpose).
	if err := guest.CheckAgent(filepath.Dir(cfg.ResolvedInitrd()), filepath.Join(filepath.Dir(o.berth), "berth-agent")); err != nil {
		return err
	}
	var cfg2 *config.Config
	var cfgPath2 string
	if o.compareStateDir != "" || o.compareConfig != "" {
		o2 := o
		if o.compareConfig != "" {
			o2.config = o.compareConfig
		}
		stateDir2 := o.compareStateDir
		if stateDir2 == "" {
			stateDir2 = o.stateDir
		}
		if cfg2, cfgPath2, err = benchConfig(o2, stateDir2, tmp, "2"); err != nil {
			return err
		}
	}
	for _, p := range []string{cfg.Guest.Kernel, cfg.Guest.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("guest image %s missing: run `make guest` (or pass -state-dir)", p)
		}
	}
	accel, reason, err := resolveAccel(ctx, cfg)
	if err != nil {
		return err
	}

	var rc *runcBench
	if o.runc != "" {
		if rc, err = newRuncBench(ctx, o.runc, rootfs, filepath.Join(tmp, "runc")); err != nil {
			return fmt.Errorf("runc baseline: %w (pass -runc '' to skip it)", err)
		}
	}

	fmt.Printf("host: %d CPUs, %s; accelerator %s (%s)\n", runtime.NumCPU(), kernelRelease(), accel, reason)
	fmt.Printf("guest: machine %s, %d vCPU, %d MiB; %d timed runs each after 1 warm-up\n\n",
		cfg.Hypervisor.Machine, cfg.Hypervisor.DefaultVCPUs, cfg.Hypervisor.DefaultMemoryMiB, o.n)

	var (
		runcRow     = &series{name: "runc run /bin/true (no VM)", short: "runc"}
		rawRow      = &series{name: "raw QEMU boot to agent ready", short: "raw"}
		sandboxRow  = &series{name: "  sandbox create (virtiofsd, QEMU, agent)", short: "sandbox"}
		createRow   = &series{name: "  container create (runc init in guest)", short: "create"}
		startRow    = &series{name: "  container start + wait (/bin/true)", short: "start+wait"}
		teardownRow = &series{name: "  teardown (release, destroy VM)", short: "teardown"}
		berthRow    = &series{name: "berth run /bin/true (end to end)", short: "berth run"}
	)
	label, label2 := kernelLabel(cfg), ""
	if cfg2 != nil {
		label2 = kernelLabel(cfg2)
		if o.compareConfig != "" { // same image perhaps: tell the two apart by configuration
			label += ", " + configLabel(o.config)
			label2 += ", " + configLabel(o.compareConfig)
		}
	}
	rawRow.name += " [" + label + "]"
	berthRow.name += " [" + label + "]"
	rawRetried := 0 // raw boots whose first Info call failed
	// One step per measurement; each appends its timings to its rows.
	steps := []func() error{
		func() error {
			d, failures, err := floor.RawBoot(ctx, cfg, accel, tmp)
			rawRow.add(d)
			rawRetried += min(failures, 1)
			return wrap("raw boot", err)
		},
		func() error {
			ph, err := berthPhases(ctx, cfg, accel, rootfs)
			sandboxRow.add(ph.sandbox)
			createRow.add(ph.create)
			startRow.add(ph.startWait)
			teardownRow.add(ph.teardown)
			return wrap("berth phases", err)
		},
		func() error {
			d, err := berthRun(ctx, berthBin, cfgPath, rootfs)
			berthRow.add(d)
			return wrap("berth run", err)
		},
	}
	rows := []*series{rawRow, sandboxRow, createRow, startRow, teardownRow, berthRow}
	if cfg2 != nil {
		raw2 := &series{name: "raw QEMU boot to agent ready [" + label2 + "]", short: "raw2"}
		berth2 := &series{name: "berth run /bin/true (end to end) [" + label2 + "]", short: "berth run2"}
		steps = append(steps, func() error {
			d, failures, err := floor.RawBoot(ctx, cfg2, accel, tmp)
			raw2.add(d)
			rawRetried += min(failures, 1)
			return wrap("raw boot ["+label2+"]", err)
		}, func() error {
			d, err := berthRun(ctx, berthBin, cfgPath2, rootfs)
			berth2.add(d)
			return wrap("berth run ["+label2+"]", err)
		})
		rows = append(rows, raw2, berth2)
		defer func() {
			if retErr == nil {
				fmt.Printf("%s: berth run / raw boot: %.2fx\n", label2, float64(median(berth2.ds))/float64(median(raw2.ds)))
			}
		}()
	}
	if rc != nil {
		steps = append(steps, func() error {
			d, err := rc.run(ctx)
			runcRow.add(d)
			return wrap("runc run", err)
		})
		rows = append([]*series{runcRow}, rows...)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := watchVMs(watchCtx, tmp+"/")
	// Round 0 is the warm-up. Each round starts with the next step, so no
	// measurement always follows the same one. With -quiet, a round during
	// which someone else's VM ran is thrown away and run again, within 3n
	// rounds in all: a neighbouring TCG guest can double a boot, and a
	// median over such rounds measures the neighbour.
	kept, crowded, discarded := 0, 0, 0
	for round := 0; kept < o.n; round++ {
		watch.sawOthers()
		retriedBefore := rawRetried
		for j := range steps {
			if err := steps[(round+j)%len(steps)](); err != nil {
				return err
			}
		}
		if round == 0 {
			for _, r := range rows {
				r.ds = nil
			}
			rawRetried = 0
			continue
		}
		var parts []string
		for _, r := range rows {
			parts = append(parts, r.short+" "+ms(r.ds[len(r.ds)-1]))
		}
		note := ""
		if watch.sawOthers() {
			if o.quiet && 3*o.n-round >= o.n-kept {
				for _, r := range rows {
					r.ds = r.ds[:len(r.ds)-1]
				}
				rawRetried = retriedBefore
				discarded++
				fmt.Fprintf(os.Stderr, "round %d: %s (another VM ran: discarded)\n", round, strings.Join(parts, "; "))
				continue
			}
			crowded++
			note = " (another VM ran)"
		}
		kept++
		fmt.Fprintf(os.Stderr, "round %d, run %d/%d: %s%s\n", round, kept, o.n, strings.Join(parts, "; "), note)
	}
	fmt.Fprintln(os.Stderr)

	printTable(rows)
	mr, mb := median(rawRow.ds), median(berthRow.ds)
	fmt.Printf("\nberth run / raw boot: %.2fx (berth adds %s to the boot floor)\n", float64(mb)/float64(mr), ms(mb-mr))
	if rc != nil {
		fmt.Printf("berth run / runc run: %.0fx\n", float64(mb)/float64(median(runcRow.ds)))
	}
	if rawRetried > 0 {
		fmt.Printf("note: in %d of %d raw boots the first Info call failed and was retried, as sandbox.Create does\n", rawRetried, o.n)
	}
	if discarded > 0 {
		fmt.Printf("note: repeated %d round(s) during which other VMs ran (-quiet)\n", discarded)
	}
	if crowded > 0 {
		fmt.Printf("warning: other VMs ran during %d of the %d runs kept; these figures are not from a quiet host\n", crowded, o.n)
	}
	return nil
}

// vmWatch notes whether a QEMU that is not the benchmark's own ran at any
// moment since it was last asked. Ours all name the benchmark's temporary
// directory on their command line; any other competes for the same CPUs
// and can double a TCG boot.
type vmWatch struct {
	ours string
	seen atomic.Bool
}

func watchVMs(ctx context.Context, ours string) *vmWatch {
	w := &vmWatch{ours: ours}
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if w.foreignQEMU() {
				w.seen.Store(true)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// sawOthers reports whether another VM ran since the last call; the next
// interval starts with whether one runs now.
func (w *vmWatch) sawOthers() bool {
	return w.seen.Swap(w.foreignQEMU())
}

func (w *vmWatch) foreignQEMU() bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// "pid (comm) state ...", where comm may itself hold ") ". The
		// kernel truncates comm: qemu-system-x86_64 is "qemu-system-x86".
		// Zombies nobody has reaped yet use no CPU.
		st := string(b)
		open, end := strings.IndexByte(st, '('), strings.LastIndex(st, ") ")
		if open < 0 || end < open || end+2 >= len(st) {
			continue
		}
		if !strings.HasPrefix(st[open+1:end], "qemu-system") || st[end+2] == 'Z' {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		if err == nil && !strings.Contains(string(cmdline), w.ours) {
			return true
		}
	}
	return false
}

// benchConfig writes the configuration berth run and this process share:
// the base file with -state-dir and -machine applied and run_dir moved
// into tmp. Writing it out and loading it back means both sides read, and
// validate, exactly the same file.
func benchConfig(o options, stateDir, tmp, suffix string) (*config.Config, string, error) {
	cfg, err := config.Load(o.config, config.Overrides{StateDir: stateDir})
	if err != nil {
		return nil, "", err
	}
	cfg.RunDir = filepath.Join(tmp, "run"+suffix)
	if o.machine != "" {
		cfg.Hypervisor.Machine = o.machine
	}
	var buf bytes.Buffer
	if err := cfg.Marshal(&buf); err != nil {
		return nil, "", err
	}
	path := filepath.Join(tmp, "config"+suffix+".toml")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return nil, "", err
	}
	cfg, err = config.Load(path, config.Overrides{})
	if err != nil {
		return nil, "", err
	}
	return cfg, path, nil
}

// resolveAccel picks the accelerator as berth run does (cmd/berth/run.go):
// "auto" is probed once and cached in run_dir, where the berth runs below
// find it, so no measured run pays for the probe.
func resolveAccel(ctx context.Context, cfg *config.Config) (qemu.Accel, string, error) {
	switch cfg.Hypervisor.Accel {
	case config.AccelKVM:
		return qemu.KVM, "hypervisor.accel", nil
	case config.AccelTCG:
		return qemu.TCG, "hypervisor.accel", nil
	}
	accel, reason, err := qemu.CachedAccel(ctx, qemu.AccelProbe{
		Binary: cfg.Hypervisor.Path, Kernel: cfg.Guest.Kernel, Timeout: 5 * time.Second,
	}, filepath.Join(cfg.RunDir, "accel.json"))
	if err != nil {
		return "", "", fmt.Errorf("probe accelerator: %w", err)
	}
	return accel, reason, nil
}

// removeTemp deletes the benchmark's temporary directory, but never while
// anything is mounted below it: a sandbox left by an interrupted berth run
// holds the user's rootfs bind-mounted there, and a recursive delete would
// go through it. Stale sandboxes are cleaned up the way berth run does it
// first.
func removeTemp(tmp string) error {
	sandbox.CleanupStale(filepath.Join(tmp, "run"))
	if m := mountsUnder(tmp); len(m) > 0 {
		return fmt.Errorf("left %s in place: still mounted below it: %s", tmp, strings.Join(m, ", "))
	}
	return os.RemoveAll(tmp)
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		// Unknown: report dir itself so nothing is deleted blindly.
		return []string{dir + " (cannot read mountinfo: " + err.Error() + ")"}
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// Mount points with spaces are octal-escaped; tmp has none, and
		// a mangled deeper path still starts with dir+"/".
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "kernel unknown"
	}
	return "Linux " + strings.TrimSpace(string(b))
}

func printTable(rows []*series) {
	fmt.Printf("| %-44s | %8s | %8s | %8s |\n", "measurement", "median", "min", "max")
	fmt.Printf("|%s|%s:|%s:|%s:|\n", strings.Repeat("-", 46), strings.Repeat("-", 9), strings.Repeat("-", 9), strings.Repeat("-", 9))
	for _, r := range rows {
		s := sorted(r.ds)
		fmt.Printf("| %-44s | %8s | %8s | %8s |\n", r.name, ms(median(r.ds)), ms(s[0]), ms(s[len(s)-1]))
	}
}

// The table's order statistics are the ones every bench command shares.
var (
	sorted = benchtab.Sorted
	median = benchtab.Median
	ms     = benchtab.MS
)

// configLabel names a base configuration file for the table.
func configLabel(path string) string {
	if path == "" {
		return "default config"
	}
	return filepath.Base(path)
}

// kernelLabel names the kernel of cfg's guest image, for the table.
func kernelLabel(cfg *config.Config) string {
	a, err := guest.Inspect(filepath.Dir(cfg.Guest.Kernel))
	if err != nil {
		return filepath.Base(cfg.Guest.Kernel)
	}
	// Two images of one kernel (e.g. an agent or initramfs change) are
	// told apart by their state directories.
	return a.KernelVersion + ", " + cfg.StateDir
}
