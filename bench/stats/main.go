// Command stats measures how long a container's stats take to read, for
// Berth and for runc in the same run, the way the kubelet reads them:
// CRI ContainerStats against containerd, which calls the runtime's shim
// (for Berth: shim -> agent in the guest -> the container's cgroup ->
// back; for runc: the host cgroup directly).
//
// It starts a private containerd (scripts/containerd-private.sh) with a
// "berth" and a "runc" runtime handler, runs one pod per handler with a
// busybox container that sleeps, and after a short warm-up calls
// ContainerStats -n times per runtime, alternating between the two so
// that neither pays alone for a busy host. It prints p50, p90, p99 and max
// per runtime, and removes everything it created.
//
// Usage (root, `make build` and the guest image built):
//
//	go run ./bench/stats -n 200 -state-dir /var/lib/berth -rootfs bin/rootfs-busybox
package main

import (
	"context"
	"flag"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/bench/internal/crienv"
)

type options struct {
	n      int
	warmup int
	crienv.Paths
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 200, "timed ContainerStats calls per runtime")
	flag.IntVar(&o.warmup, "warmup", 10, "untimed calls per runtime first")
	o.Paths.Flags()
	flag.Parse()
	crienv.Main(func(ctx context.Context) error { return run(ctx, o) })
}

func run(ctx context.Context, o options) error {
	if o.n < 100 {
		return fmt.Errorf("-n %d: use at least 100 calls, or p99 means nothing", o.n)
	}
	env, err := crienv.Start(ctx, "stats", o.Paths)
	if err != nil {
		return err
	}
	defer env.Close()
	tmp := env.Dir
	rt := env.RT

	handlers := []string{"runc", "berth"}
	ids := map[string]string{}
	for _, h := range handlers {
		podID, ctrID, err := env.StartPod(ctx, crienv.Pod{
			Handler: h, Name: "stats-" + h, LogDir: filepath.Join(tmp, "logs-"+h),
			Container: "sleep", Command: []string{"sleep", "100000"},
		})
		if podID != "" {
			defer env.RemovePod(podID)
		}
		if err != nil {
			return fmt.Errorf("%s pod: %w", h, err)
		}
		ids[h] = ctrID
	}
	lat := map[string][]time.Duration{}
	for i := 0; i < o.warmup+o.n; i++ {
		for _, h := range handlers {
			t0 := time.Now()
			if _, err := rt.ContainerStats(ctx, &cri.ContainerStatsRequest{ContainerId: ids[h]}); err != nil {
				return fmt.Errorf("%s ContainerStats: %w", h, err)
			}
			if i >= o.warmup {
				lat[h] = append(lat[h], time.Since(t0))
			}
		}
	}
	fmt.Printf("CRI ContainerStats latency, %d calls per runtime after %d warm-up calls (containerd %s)\n\n", o.n, o.warmup, containerdVersion())
	fmt.Printf("| runtime | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n")
	for _, h := range handlers {
		d := lat[h]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		fmt.Printf("| %s | %s | %s | %s | %s |\n", h, ms(pct(d, 50)), ms(pct(d, 90)), ms(pct(d, 99)), ms(d[len(d)-1]))
	}
	return nil
}

// pct is the p-th percentile (nearest rank) of sorted d.
func pct(d []time.Duration, p int) time.Duration {
	i := (len(d)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return d[i-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func containerdVersion() string {
	out, _ := exec.Command("containerd", "--version").Output()
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return "?"
}
