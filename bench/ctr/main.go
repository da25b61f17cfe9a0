// Command ctr measures a whole container run through a real containerd, in
// one run: `ctr run --rm IMAGE /bin/true` with runc and with Berth, plus
// the raw VM boot floor (QEMU with Berth's guest image until the agent
// answers), and prints medians and ratios.
//
// It starts a private containerd (scripts/containerd-private.sh) with
// Berth's shim from -bin on its PATH, imports a busybox image built from
// -rootfs, and stops containerd at the end.
//
// Usage (root): go run ./bench/ctr -n 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-runtime/berth/bench/internal/benchtab"
	"github.com/berth-runtime/berth/bench/internal/floor"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/guest"
	"github.com/berth-runtime/berth/internal/ociimage"
	"github.com/berth-runtime/berth/internal/qemu"
)

const image = "docker.io/library/busybox:berth-bench"

func main() {
	n := flag.Int("n", 5, "runs of each measurement")
	rootfs := flag.String("rootfs", "bin/rootfs-busybox", "busybox root file system")
	binDir := flag.String("bin", "bin", "directory holding containerd-shim-berth-v2")
	stateDir := flag.String("state-dir", "/var/lib/berth", "Berth state directory (guest image)")
	flag.Parse()

	work, err := os.MkdirTemp("", "berth-bench-ctr-")
	if err != nil {
		fatal(err)
	}
	// QEMU runs as an unprivileged uid and must reach run_dir below it.
	os.Chmod(work, 0o711)
	defer os.RemoveAll(work)
	script := filepath.Join("scripts", "containerd-private.sh")
	bin, _ := filepath.Abs(*binDir)
	start := exec.Command(script, "start", filepath.Join(work, "containerd"), bin)
	start.Env = append(os.Environ(), "BERTH_STATE_DIR="+*stateDir)
	out, err := start.Output()
	if err != nil {
		fatal(fmt.Errorf("start containerd: %v", err))
	}
	defer exec.Command(script, "stop", filepath.Join(work, "containerd")).Run()
	sock := strings.TrimSpace(string(out))

	archive := filepath.Join(work, "busybox.tar")
	if err := ociimage.PackFile(archive, *rootfs, ociimage.Options{Ref: image, Cmd: []string{"/bin/sh"}}); err != nil {
		fatal(err)
	}
	if out, err := exec.Command("ctr", "-a", sock, "images", "import", archive).CombinedOutput(); err != nil {
		fatal(fmt.Errorf("import: %v: %s", err, out))
	}

	cfg, err := config.Load("", config.Overrides{StateDir: *stateDir})
	if err != nil {
		fatal(err)
	}
	if err := guest.CheckAgent(filepath.Dir(cfg.ResolvedInitrd()), filepath.Join(bin, "berth-agent")); err != nil {
		fatal(err)
	}
	var runc, berth, bootFloor []time.Duration
	for i := 0; i < *n; i++ {
		runc = append(runc, ctrRun(sock, "io.containerd.runc.v2", i))
		berth = append(berth, ctrRun(sock, "io.containerd.berth.v2", i))
		d, _, err := floor.RawBoot(context.Background(), cfg, qemu.TCG, work)
		if err != nil {
			fatal(err)
		}
		bootFloor = append(bootFloor, d)
	}
	fmt.Printf("ctr run --rm %s /bin/true, private containerd %s, %d runs each (TCG, 2 vCPU host)\n\n", image, containerdVersion(), *n)
	benchtab.Print(os.Stdout, []benchtab.Series{
		{Name: "runc", Runs: runc},
		{Name: "berth", Runs: berth},
		{Name: "raw VM boot floor (QEMU to agent ready)", Runs: bootFloor},
	})
	mr, mb, mf := benchtab.Median(runc), benchtab.Median(berth), benchtab.Median(bootFloor)
	fmt.Printf("\nberth / runc: %.1fx; berth over the VM boot floor: %s (%.2fx the floor)\n",
		float64(mb)/float64(mr), benchtab.MS(mb-mf), float64(mb)/float64(mf))
}

func ctrRun(sock, runtime string, i int) time.Duration {
	id := fmt.Sprintf("bench-%s-%d", strings.Split(runtime, ".")[2], i)
	t0 := time.Now()
	out, err := exec.Command("ctr", "-a", sock, "run", "--rm", "--runtime", runtime, image, id, "/bin/true").CombinedOutput()
	if err != nil {
		fatal(fmt.Errorf("ctr run (%s): %v: %s", runtime, err, out))
	}
	return time.Since(t0)
}

func containerdVersion() string {
	out, err := exec.Command("containerd", "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return strings.TrimSpace(string(out))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
