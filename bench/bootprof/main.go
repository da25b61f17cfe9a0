// Command bootprof is a sampling profiler of a guest's boot under TCG:
// it boots the configured guest image the way bench/boot's raw boot does
// (Berth's kernel command line, only the agent's port), asks QEMU for
// the vCPU's registers every few milliseconds through QMP (`info
// registers`) and names the function holding each sampled RIP, from the
// kernel's System.map and, for the agent, from `go tool nm` of an
// unstripped build of the same agent. It prints the leading functions of
// each 100 ms window and of the whole run.
//
// This is how the TCG-specific costs of guest/kernel/edits.go were found
// (docs/benchmarks.md). Read it as a map, not a measurement: under TCG
// the RIP QEMU reports is the one last written back, at the end of a
// translated block, a helper call or an I/O access, so code that exits
// to QEMU often (I/O, page faults, first executions, being translated)
// is over-represented, and an MMIO access may wait for the lock that the
// sampling itself takes. Each sample also slows the guest a little.
//
//	go run ./bench/bootprof -seconds 3 [-system-map FILE] [-agent-symbols FILE] [-params "..."]
//
// With -attach SOCKET it boots nothing and samples a VM Berth started,
// through a second QMP socket that a wrapper script named as
// hypervisor.path adds to QEMU's command line (`exec qemu-system-x86_64
// "$@" -qmp unix:SOCKET,server=on,wait=off`, for the TCG VM only, not
// the accelerator probe): that profiles a whole `berth run` or pod
// start, container create included. -after limits the run's list to
// the samples after a point, such as the agent answering.
//
// Run as root, like the other benchmarks. -agent-symbols takes the output
// of `go tool nm -n` of the agent built as `make build` does but without
// -s -w (the text layout is the same).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berth-runtime/berth/bench/internal/floor"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/qemu/qmp"
)

func main() {
	configPath := flag.String("config", "", "Berth configuration (default: the usual search)")
	stateDir := flag.String("state-dir", "", "state_dir holding the guest image (default: the configuration's)")
	seconds := flag.Float64("seconds", 3, "how long to sample from QEMU's start")
	interval := flag.Duration("interval", 3*time.Millisecond, "pause between samples")
	systemMap := flag.String("system-map", "", "the guest kernel's System.map (default: the newest in state_dir/cache)")
	agentSyms := flag.String("agent-symbols", "", "`go tool nm -n` output of an unstripped agent")
	params := flag.String("params", "", "extra kernel parameters")
	top := flag.Int("top", 30, "functions listed for the whole run")
	after := flag.Duration("after", 0, "count only samples this long after the start in the whole run's list (the windows still show everything)")
	attach := flag.String("attach", "", "sample the VM behind this QMP `socket` instead of booting one (waits for it to appear)")
	flag.Parse()

	cfg, err := config.Load(*configPath, config.Overrides{StateDir: *stateDir})
	if err != nil {
		log.Fatal(err)
	}
	if *systemMap == "" {
		maps, _ := filepath.Glob(filepath.Join(cfg.StateDir, "cache", "kernel-*", "System.map"))
		if len(maps) == 0 {
			log.Fatalf("no System.map under %s/cache (Berth's kernel keeps one; give -system-map)", cfg.StateDir)
		}
		sort.Slice(maps, func(i, j int) bool { return modTime(maps[i]).After(modTime(maps[j])) })
		*systemMap = maps[0]
	}
	kernel, err := readSymbols(*systemMap, func(f []string) bool { return strings.ContainsAny(f[1], "tTwW") })
	if err != nil {
		log.Fatal(err)
	}
	var agent symbols
	if *agentSyms != "" {
		if agent, err = readSymbols(*agentSyms, func(f []string) bool { return f[1] == "T" || f[1] == "t" }); err != nil {
			log.Fatal(err)
		}
	}

	d := time.Duration(*seconds * float64(time.Second))
	var samples []sampleAt
	if *attach != "" {
		samples, err = sampleAttached(context.Background(), *attach, d, *interval)
	} else {
		samples, err = sample(context.Background(), cfg, *params, d, *interval)
	}
	if err != nil {
		log.Fatal(err)
	}
	name := func(rip uint64) string {
		switch {
		case rip >= 0xffffffff00000000:
			return kernel.lookup(rip)
		case agent != nil:
			return "agent:" + agent.lookup(rip)
		}
		return "user"
	}
	windows := map[int]map[string]int{}
	total := map[string]int{}
	for _, s := range samples {
		w := int(s.at / (100 * time.Millisecond))
		if windows[w] == nil {
			windows[w] = map[string]int{}
		}
		n := name(s.rip)
		windows[w][n]++
		if s.at >= *after {
			total[n]++
		}
	}
	fmt.Printf("%d samples over %.1f s (kernel symbols %s)\n\n", len(samples), *seconds, *systemMap)
	var ws []int
	for w := range windows {
		ws = append(ws, w)
	}
	sort.Ints(ws)
	for _, w := range ws {
		n := 0
		for _, c := range windows[w] {
			n += c
		}
		fmt.Printf("%5d ms  %3d  %s\n", w*100, n, strings.Join(leading(windows[w], 4), ", "))
	}
	fmt.Println()
	for _, l := range leading(total, *top) {
		fmt.Println(l)
	}
}

type sampleAt struct {
	at  time.Duration
	rip uint64
}

var ripRE = regexp.MustCompile(`RIP=([0-9a-f]+)`)

// sample boots the raw VM and samples its RIP until d has passed.
func sample(ctx context.Context, cfg *config.Config, params string, d, interval time.Duration) ([]sampleAt, error) {
	dir, err := os.MkdirTemp("", "berth-bootprof-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	m, err := floor.Machine(cfg, qemu.TCG, dir, params)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	vm, err := qemu.Start(ctx, m, qemu.StartOptions{DieWithParent: true})
	if err != nil {
		return nil, err
	}
	defer vm.Kill()
	return sampleRIP(ctx, vm.QMP(), start, d, interval)
}

// sampleAttached samples the VM whose extra QMP socket is at path: one a
// wrapper around QEMU (hypervisor.path) added with `-qmp
// unix:PATH,server=on,wait=off`, so that a whole `berth run` or pod start
// is profiled, not only the raw boot. The clock starts when the socket
// answers, a few milliseconds after QEMU starts.
func sampleAttached(ctx context.Context, path string, d, interval time.Duration) ([]sampleAt, error) {
	var c *qmp.Client
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		var err error
		if c, err = qmp.Dial(ctx, path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no QMP at %s: %w", path, err)
		}
	}
	defer c.Close()
	return sampleRIP(ctx, c, time.Now(), d, interval)
}

// sampleRIP asks QEMU for the vCPU's registers every interval until d
// has passed since start, or QEMU goes away.
func sampleRIP(ctx context.Context, c *qmp.Client, start time.Time, d, interval time.Duration) ([]sampleAt, error) {
	var out []sampleAt
	for time.Since(start) < d {
		var regs string
		if err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info registers"}, &regs); err != nil {
			if len(out) > 0 {
				return out, nil // the VM ended: what was sampled stands
			}
			return nil, fmt.Errorf("info registers: %w", err)
		}
		if mm := ripRE.FindStringSubmatch(regs); mm != nil {
			rip, _ := strconv.ParseUint(mm[1], 16, 64)
			out = append(out, sampleAt{time.Since(start), rip})
		}
		time.Sleep(interval)
	}
	return out, nil
}

// symbols are start addresses and names, sorted by address.
type symbols []struct {
	addr uint64
	name string
}

// readSymbols reads "address type name" lines (System.map, go tool nm -n)
// whose fields pass keep.
func readSymbols(path string, keep func([]string) bool) (symbols, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var s symbols
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || !keep(fields) {
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			continue
		}
		s = append(s, struct {
			addr uint64
			name string
		}{a, fields[2]})
	}
	sort.Slice(s, func(i, j int) bool { return s[i].addr < s[j].addr })
	return s, sc.Err()
}

func (s symbols) lookup(a uint64) string {
	i := sort.Search(len(s), func(i int) bool { return s[i].addr > a }) - 1
	if i < 0 {
		return fmt.Sprintf("%#x", a)
	}
	return s[i].name
}

// leading lists the n largest counts as "name:count", largest first.
func leading(counts map[string]int, n int) []string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range counts {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var out []string
	for i := 0; i < len(all) && i < n; i++ {
		out = append(out, fmt.Sprintf("%s:%d", all[i].k, all[i].v))
	}
	return out
}

func modTime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}
