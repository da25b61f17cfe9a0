// Command pods measures Berth pods through the CRI, as the kubelet starts
// them, in one run:
//
//   - a single pod start (RunPodSandbox + CreateContainer + StartContainer
//     of a busybox container) -n times, Berth and runc taking turns;
//   - the host memory of one idle Berth pod: the proportional set size
//     (PSS, /proc/<pid>/smaps_rollup) of its QEMU, virtiofsd and shim,
//     after -idle of idling, split into anonymous, shared-memory (guest
//     RAM) and file pages, and the host CPU it used over the second half
//     of the idling (an idle pod should cost next to none: a guest agent
//     that polls shows here);
//   - -parallel Berth pods started at once: every start's time, p50, p99
//     and max against the single start's median of the same run, how
//     close the slowest came to hypervisor.boot_timeout, their PSS per
//     pod after -idle side by side (the file pages every pod maps are
//     then shared, as on a node), and whether anything (a QEMU,
//     virtiofsd, shim or sandbox directory) is left once they are
//     removed.
//
// It starts a private containerd (bench/internal/crienv) and removes
// everything it created.
//
// Usage (root, `make build` and the guest image built):
//
//	go run ./bench/pods -n 5 -parallel 10 -state-dir /var/lib/berth -rootfs bin/rootfs-busybox
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-runtime/berth/bench/internal/benchtab"
	"github.com/berth-runtime/berth/bench/internal/crienv"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/stats"
)

type options struct {
	n, parallel int
	idle        time.Duration
	crienv.Paths
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 5, "single pod starts per runtime")
	flag.IntVar(&o.parallel, "parallel", 10, "Berth pods started at once")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "how long the pod idles before its PSS is read")
	o.Paths.Flags()
	flag.Parse()
	crienv.Main(func(ctx context.Context) error { return run(ctx, o) })
}

func run(ctx context.Context, o options) error {
	if o.n < 1 || o.parallel < 1 {
		return errors.New("-n and -parallel must be at least 1")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it starts containerd and VMs")
	}
	env, err := crienv.Start(ctx, "pods", o.Paths)
	if err != nil {
		return err
	}
	defer env.Close()
	tmp := env.Dir
	timeout := config.Default().Hypervisor.BootTimeout.Duration

	seq := 0
	var ph crienv.Phases
	start := func(handler string) (time.Duration, string, error) {
		seq++
		t0 := time.Now()
		podID, _, err := env.StartPod(ctx, crienv.Pod{
			Handler: handler, Name: fmt.Sprintf("pods-%s-%d", handler, seq), LogDir: filepath.Join(tmp, "logs"),
			Container: "sleep", Command: []string{"sleep", "100000"}, Phases: &ph,
		})
		return time.Since(t0), podID, err
	}

	// Single starts, one warm-up round first, the runtimes taking turns.
	single := map[string][]time.Duration{}
	var sandbox, create, startC []time.Duration // Berth's phases
	for i := 0; i <= o.n; i++ {
		for _, h := range []string{"runc", "berth"} {
			d, id, err := start(h)
			if id != "" {
				env.RemovePod(id)
			}
			if err != nil {
				return fmt.Errorf("%s pod: %w", h, err)
			}
			if i > 0 {
				single[h] = append(single[h], d)
				if h == "berth" {
					sandbox, create, startC = append(sandbox, ph.RunPodSandbox), append(create, ph.CreateContainer), append(startC, ph.StartContainer)
				}
			}
			fmt.Fprintf(os.Stderr, "single %s %d: %s\n", h, i, benchtab.MS(d))
		}
	}

	// One idle pod's PSS.
	d, id, err := start("berth")
	if err != nil {
		if id != "" {
			env.RemovePod(id)
		}
		return fmt.Errorf("idle pod: %w", err)
	}
	fmt.Fprintf(os.Stderr, "idle pod started in %s; idling %v\n", benchtab.MS(d), o.idle)
	pssHalf, pss, err := idlePSS(env.RunDir, o.idle)
	env.RemovePod(id)
	if err != nil {
		return err
	}

	// -parallel pods at once.
	var wg sync.WaitGroup
	par := make([]time.Duration, o.parallel)
	parPhases := make([]crienv.Phases, o.parallel)
	ids := make([]string, o.parallel)
	errs := make([]error, o.parallel)
	seq += o.parallel
	cpu0 := hostCPUTime()
	tAll := time.Now()
	for i := range par {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			t0 := time.Now()
			ids[i], _, errs[i] = env.StartPod(ctx, crienv.Pod{
				Handler: "berth", Name: fmt.Sprintf("pods-par-%d", i), LogDir: filepath.Join(tmp, "logs"),
				Container: "sleep", Command: []string{"sleep", "100000"},
				Phases: &parPhases[i],
			})
			par[i] = time.Since(t0)
		}(i)
	}
	wg.Wait()
	parWall, parCPU := time.Since(tAll), hostCPUTime()-cpu0
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			fmt.Fprintf(os.Stderr, "parallel pod %d: %v\n", i, err)
		}
	}
	// The same pods idle side by side: what each costs the host when the
	// file pages every pod maps (QEMU's and the shim's binaries, the guest
	// kernel and root image) are shared, as on a node, rather than
	// counted whole for one pod alone.
	started := o.parallel - failed
	var allHalf, allPSS []procPSS
	if started > 0 {
		if allHalf, allPSS, err = idlePSS(env.RunDir, o.idle); err != nil {
			return err
		}
	}
	for _, id := range ids {
		if id != "" {
			env.RemovePod(id)
		}
	}
	left := leftovers(env.RunDir)

	fmt.Printf("CRI pods, private containerd; %d single starts per runtime after a warm-up, then %d Berth pods at once\n\n", o.n, o.parallel)
	benchtab.Print(os.Stdout, []benchtab.Series{
		{Name: "runc pod start (RunPodSandbox+Create+Start)", Runs: single["runc"]},
		{Name: "berth pod start (RunPodSandbox+Create+Start)", Runs: single["berth"]},
		{Name: "  RunPodSandbox (VM boot, sandbox)", Runs: sandbox},
		{Name: "  CreateContainer", Runs: create},
		{Name: "  StartContainer", Runs: startC},
		{Name: fmt.Sprintf("berth pod start, %d at once", o.parallel), Runs: par},
	})
	one := benchtab.Median(single["berth"])
	p50, p99 := benchtab.Percentile(par, 50), benchtab.Percentile(par, 99)
	fmt.Printf("\n%d at once: %d of %d started; p50 %s (%.1fx a single start), p99 %s (%.1fx), slowest at %.0f%% of boot_timeout (%v)\n",
		o.parallel, started, o.parallel, benchtab.MS(p50), float64(p50)/float64(one), benchtab.MS(p99), float64(p99)/float64(one),
		100*float64(benchtab.Percentile(par, 100))/float64(timeout), timeout)
	fmt.Printf("the %d starts used %.1f s of host CPU in %.1f s (%.2f of the host's %d CPUs)\n",
		o.parallel, parCPU.Seconds(), parWall.Seconds(), parCPU.Seconds()/parWall.Seconds(), runtime.NumCPU())
	printTimeline(par, parPhases)
	if len(left) == 0 {
		fmt.Println("after removal: nothing left (no QEMU, virtiofsd or shim process, no sandbox directory)")
	} else {
		fmt.Printf("after removal: LEFT: %s\n", strings.Join(left, "; "))
	}
	window := idleWindow(o.idle)
	fmt.Printf("\nidle Berth pod after %v, host PSS (anonymous, shared memory and file pages; file pages are shared with every other pod of the host, so one pod alone counts them whole), the CPU time each process used from its start, and its share of one host CPU over the last %v of idling:\n\n| process | PSS | anon | shmem | file | CPU | idle CPU |\n|---|--:|--:|--:|--:|--:|--:|\n", o.idle, window)
	var cpu time.Duration
	for _, p := range pss {
		fmt.Printf("| %s | %s | %s | %s |\n", p.name, pssMiB(p.mem), benchtab.MS(p.cpu), cpuShare(p.cpu-cpuOf(pssHalf, p.name), window))
		cpu += p.cpu
	}
	fmt.Printf("| **total** | %s | %s | %s |\n", pssMiB(sumPSS(pss)), benchtab.MS(cpu), cpuShare(cpu-cpuOf(pssHalf, ""), window))
	if started > 0 {
		t, n := sumPSS(allPSS), uint64(started)
		per := stats.SmapsRollup{Pss: t.Pss / n, PssAnon: t.PssAnon / n, PssShmem: t.PssShmem / n, PssFile: t.PssFile / n}
		var cpu time.Duration
		for _, p := range allPSS {
			cpu += p.cpu
		}
		idle := (cpu - cpuOf(allHalf, "")) / time.Duration(n)
		fmt.Printf("| **per pod, %d pods idle side by side** | %s | %s | %s |\n", started, pssMiB(per), benchtab.MS(cpu/time.Duration(n)), cpuShare(idle, window))
	}
	if failed > 0 || len(left) > 0 {
		return errors.New("some pods failed to start or left something behind")
	}
	return nil
}

// idlePSS lets the pods below runDir idle for d and reads their
// processes twice: halfway, and at the end, whose PSS the table shows;
// the CPU used between the two is what the pods cost the host while
// idle, the start behind them.
func idlePSS(runDir string, d time.Duration) (half, end []procPSS, err error) {
	time.Sleep(d - idleWindow(d))
	if half, err = podPSS(runDir); err != nil {
		return nil, nil, err
	}
	time.Sleep(idleWindow(d))
	end, err = podPSS(runDir)
	return half, end, err
}

// idleWindow is the part of an idling of d over which idlePSS measures
// the CPU: its second half.
func idleWindow(d time.Duration) time.Duration { return d - d/2 }

// cpuOf is the CPU time of the process named name in ps, or of all of
// them for "".
func cpuOf(ps []procPSS, name string) time.Duration {
	var t time.Duration
	for _, p := range ps {
		if name == "" || p.name == name {
			t += p.cpu
		}
	}
	return t
}

// cpuShare is used as a share of one host CPU over window.
func cpuShare(used, window time.Duration) string {
	return fmt.Sprintf("%.1f%%", 100*used.Seconds()/window.Seconds())
}

type procPSS struct {
	name string
	mem  stats.SmapsRollup
	// cpu is the CPU time the process has used since it started.
	cpu time.Duration
}

// pssMiB is the table cells of m's PSS and its anonymous, shared-memory
// and file parts.
func pssMiB(m stats.SmapsRollup) string {
	f := func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	return fmt.Sprintf("%s | %s | %s | %s", f(m.Pss), f(m.PssAnon), f(m.PssShmem), f(m.PssFile))
}

func sumPSS(ps []procPSS) stats.SmapsRollup {
	var t stats.SmapsRollup
	for _, p := range ps {
		t.Pss, t.PssAnon, t.PssShmem, t.PssFile = t.Pss+p.mem.Pss, t.PssAnon+p.mem.PssAnon, t.PssShmem+p.mem.PssShmem, t.PssFile+p.mem.PssFile
	}
	return t
}

// podPSS reads the PSS of the one running Berth pod's processes: QEMU and
// virtiofsd (their command lines name a socket under runDir) and the shim
// that started them (their parent).
func podPSS(runDir string) ([]procPSS, error) {
	var out []procPSS
	shims := map[int]bool{}
	for _, pid := range pids() {
		cmd := cmdline(pid)
		var name string
		switch {
		case strings.Contains(cmd, "qemu-system") && strings.Contains(cmd, runDir):
			name = "QEMU"
		case strings.Contains(cmd, "virtiofsd") && strings.Contains(cmd, runDir):
			name = "virtiofsd"
		default:
			continue
		}
		m, err := readPSS(pid)
		if err != nil {
			return nil, err
		}
		out = append(out, procPSS{name: fmt.Sprintf("%s (pid %d)", name, pid), mem: m, cpu: procCPU(pid)})
		if pp := parent(pid); pp > 0 && strings.Contains(cmdline(pp), "containerd-shim-berth-v2") {
			shims[pp] = true
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no QEMU or virtiofsd below %s", runDir)
	}
	for pid := range shims {
		m, err := readPSS(pid)
		if err != nil {
			return nil, err
		}
		out = append(out, procPSS{name: fmt.Sprintf("shim (pid %d)", pid), mem: m, cpu: procCPU(pid)})
	}
	return out, nil
}

// leftovers lists what of the pods remains: processes naming runDir, shim
// processes, sandbox directories.
func leftovers(runDir string) []string {
	var left []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		left = nil
		for _, pid := range pids() {
			cmd := cmdline(pid)
			if strings.Contains(cmd, runDir) || strings.Contains(cmd, "containerd-shim-berth-v2") {
				left = append(left, fmt.Sprintf("pid %d %.60s", pid, cmd))
			}
		}
		if ents, _ := os.ReadDir(filepath.Join(runDir, "sandboxes")); len(ents) > 0 {
			left = append(left, fmt.Sprintf("%d sandbox directories in %s", len(ents), filepath.Join(runDir, "sandboxes")))
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != os.Getpid() {
			out = append(out, pid)
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// statFields is /proc/PID/stat after the command name, which is in
// parentheses and may hold spaces: the state first, the parent second.
// nil if it cannot be read.
func statFields(pid int) []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func parent(pid int) int {
	if f := statFields(pid); len(f) > 1 {
		pp, _ := strconv.Atoi(f[1])
		return pp
	}
	return 0
}

// readPSS reads pid's smaps_rollup.
func readPSS(pid int) (stats.SmapsRollup, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return stats.SmapsRollup{}, err
	}
	defer f.Close()
	m, err := stats.ParseSmapsRollup(f)
	if err != nil {
		return stats.SmapsRollup{}, fmt.Errorf("pid %d: smaps_rollup: %w", pid, err)
	}
	if m.Pss == 0 {
		return stats.SmapsRollup{}, fmt.Errorf("pid %d: no Pss in smaps_rollup", pid)
	}
	return m, nil
}

// printTimeline prints, for pods started at once, when each one's CRI
// calls returned (from the common start, in order of finishing): where a
// pod waited shows apart from what it did.
func printTimeline(total []time.Duration, phases []crienv.Phases) {
	order := make([]int, len(total))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return total[order[a]] < total[order[b]] })
	fmt.Println("\n| pod | RunPodSandbox returned | CreateContainer | StartContainer (done) |\n|--:|--:|--:|--:|")
	for _, i := range order {
		ph := phases[i]
		fmt.Printf("| %d | %s | +%s | +%s (%s) |\n", i, benchtab.MS(ph.RunPodSandbox),
			benchtab.MS(ph.CreateContainer), benchtab.MS(ph.StartContainer), benchtab.MS(total[i]))
	}
	fmt.Println()
}

// hostCPUTime is the CPU time the whole host has spent outside idle and
// iowait since boot (/proc/stat), 0 if it cannot be read.
func hostCPUTime() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// procCPU is the user and system time pid has used (/proc/PID/stat), 0 if
// it cannot be read.
func procCPU(pid int) time.Duration {
	// utime and stime are the 12th and 13th fields after the command.
	f := statFields(pid)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / 100 // USER_HZ
}
