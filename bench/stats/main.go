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
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/ociimage"
)

const (
	busyboxImage = "docker.io/library/busybox:berth-bench"
	pauseImage   = "docker.io/library/berth-pause:latest"
)

type options struct {
	n        int
	warmup   int
	stateDir string
	rootfs   string
	bin      string
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 200, "timed ContainerStats calls per runtime")
	flag.IntVar(&o.warmup, "warmup", 10, "untimed calls per runtime first")
	flag.StringVar(&o.stateDir, "state-dir", "/var/lib/berth", "Berth state directory holding the guest image")
	flag.StringVar(&o.rootfs, "rootfs", "bin/rootfs-busybox", "busybox root file system for the container (scripts/busybox-rootfs.sh)")
	flag.StringVar(&o.bin, "bin", "bin", "directory holding containerd-shim-berth-v2")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.n < 100 {
		return fmt.Errorf("-n %d: use at least 100 calls, or p99 means nothing", o.n)
	}
	if _, err := os.Stat(filepath.Join(o.rootfs, "bin", "busybox")); err != nil {
		return fmt.Errorf("-rootfs %s: %w (make rootfs)", o.rootfs, err)
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "berth-bench-stats-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cfg := filepath.Join(tmp, "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir = %q\nrun_dir = %q\n", o.stateDir, filepath.Join(tmp, "run"))), 0o644); err != nil {
		return err
	}
	script := filepath.Join(filepath.Dir(bin), "scripts", "containerd-private.sh")
	ctrdDir := filepath.Join(tmp, "containerd")
	start := exec.Command(script, "start", ctrdDir, bin)
	start.Env = append(os.Environ(), "BERTH_CONFIG="+cfg)
	start.Stderr = os.Stderr
	out, err := start.Output()
	if err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	defer exec.Command(script, "stop", ctrdDir).Run()
	sock := strings.TrimSpace(string(out))
	for _, img := range []struct {
		ref string
		cmd []string
	}{{busyboxImage, []string{"/bin/sh"}}, {pauseImage, []string{"/bin/sleep", "2147483647"}}} {
		archive := filepath.Join(tmp, filepath.Base(strings.ReplaceAll(img.ref, ":", "_"))+".tar")
		f, err := os.Create(archive)
		if err != nil {
			return err
		}
		err = ociimage.Pack(f, o.rootfs, ociimage.Options{Ref: img.ref, Cmd: img.cmd})
		f.Close()
		if err != nil {
			return err
		}
		if out, err := exec.Command("ctr", "-a", sock, "-n", "k8s.io", "images", "import", archive).CombinedOutput(); err != nil {
			return fmt.Errorf("import %s: %v: %s", img.ref, err, out)
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	waitImage(ctx, cri.NewImageServiceClient(conn))

	handlers := []string{"runc", "berth"}
	ids := map[string]string{}
	defer removeCgroupParents()
	for _, h := range handlers {
		podID, ctrID, err := startPod(ctx, rt, h, tmp)
		if podID != "" {
			defer removePod(rt, podID)
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

func waitImage(ctx context.Context, img cri.ImageServiceClient) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: busyboxImage}})
		if err == nil && st.Image != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startPod runs a pod with one sleeping container, on the private
// containerd's CNI network (Berth refuses hostNetwork pods).
func startPod(ctx context.Context, rt cri.RuntimeServiceClient, handler, tmp string) (podID, ctrID string, err error) {
	ns := &cri.NamespaceOption{Network: cri.NamespaceMode_POD, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD}
	uid := fmt.Sprintf("bench-%s-%d", handler, time.Now().UnixNano())
	pc := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: "stats-" + handler, Uid: uid, Namespace: "berth-bench"},
		LogDirectory: filepath.Join(tmp, "logs-"+handler),
		Linux: &cri.LinuxPodSandboxConfig{
			CgroupParent:    "/berth-bench/pod" + uid,
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: ns},
		},
	}
	os.MkdirAll(pc.LogDirectory, 0o755)
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	pod, err := rt.RunPodSandbox(cctx, &cri.RunPodSandboxRequest{Config: pc, RuntimeHandler: handler})
	if err != nil {
		return "", "", err
	}
	c, err := rt.CreateContainer(cctx, &cri.CreateContainerRequest{PodSandboxId: pod.PodSandboxId, SandboxConfig: pc, Config: &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: "sleep"},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  []string{"sleep", "100000"},
		LogPath:  "sleep.log",
		Linux:    &cri.LinuxContainerConfig{SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: ns}},
	}})
	if err != nil {
		return pod.PodSandboxId, "", err
	}
	if _, err := rt.StartContainer(cctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return pod.PodSandboxId, "", err
	}
	return pod.PodSandboxId, c.ContainerId, nil
}

func removePod(rt cri.RuntimeServiceClient, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: id})
	rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: id})
}

// removeCgroupParents removes the pod cgroups runc left under
// /berth-bench (a kubelet would own them) once they are empty.
func removeCgroupParents() {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/berth-bench/pod*")
	more, _ := filepath.Glob("/sys/fs/cgroup/berth-bench/pod*")
	for _, d := range append(dirs, more...) {
		os.Remove(d)
		os.Remove(filepath.Dir(d))
	}
}
